"""medsynth: medical synthetic-data augmentation (GANs for chest X-ray and CT), offline by design."""

__version__ = "0.1.0"
