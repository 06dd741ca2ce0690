"""The first five minutes: which default recipe learns recognisable images in 5 minutes on 2 CPU cores."""
