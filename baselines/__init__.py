"""Baseline segmentation models, registered into vmbench's model registry on import."""

from baselines import att_unet, nnunet, swin_unet, transfuse, unet  # noqa: F401  (importing registers the models)
