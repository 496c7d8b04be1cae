"""Baseline segmentation models, registered into vmbench's model registry on import."""
