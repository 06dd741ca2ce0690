"""The augmentation trial of issue 16 on LIDC-IDRI and the phantom (see README.md)."""
