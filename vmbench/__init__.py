"""vmbench: benchmark and hyperparameter search for medical image segmentation, centred on VM-UNet."""

from importlib.metadata import PackageNotFoundError, version

from vmbench.registry import (
    create_model,
    dataset_info,
    list_datasets,
    list_models,
    model_info,
    register_dataset,
    register_model,
)

try:
    __version__ = version("vmbench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "create_model",
    "dataset_info",
    "list_datasets",
    "list_models",
    "model_info",
    "register_dataset",
    "register_model",
]
