"""Full resolution end to end (issue 18 point 4): 512² and 1024² whole-chest radiographs, multiscale GAN, DICOM with spacing."""
