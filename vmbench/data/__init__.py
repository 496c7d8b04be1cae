"""Datasets; importing this package registers them.

Registered: ``isic2017``, ``isic2018`` (binary, pooled 2D evaluation), ``synapse`` (9 classes,
3D volume evaluation), ``synthetic-isic`` and ``synthetic-synapse`` (generated stand-ins that
build themselves into the vmbench cache when ``root`` is None). Datasets users bring (a folder of
images and masks, an nnU-Net raw dataset) are registered at run time under the user's name from
their declaration in the configuration: :mod:`vmbench.data.user`.

``dataset_for(cfg, split)`` builds a split from an experiment configuration: the one way the
engine, the sweep and the commands build datasets. ``build_dataset(name, root, split, protocol,
img_size, augment, seed, **options)`` is its keyword form, checked against the registry entry.
Every dataset they return has ``name``, ``split``, ``protocol``, ``is_volume``, ``val_is_test``, ``img_size`` and ``__len__``; 2D datasets also have
``set_epoch(epoch)`` (augmentation is a function of seed, epoch and index).
"""

from __future__ import annotations

from typing import Sequence

from vmbench.data.common import PROTOCOLS, SPLITS, cache_dir, check_split_protocol
from vmbench.errors import DataError
from vmbench.data import isic, synapse, synthetic, user  # noqa: F401  (registers the datasets; user: declared ones)
from vmbench.config import ExperimentConfig
from vmbench.data.isic import ISICDataset, build_isic
from vmbench.data.synapse import (
    HOLDOUT_VAL_CASES,
    PAPER_TEST_CASES,
    PAPER_TRAIN_CASES,
    SynapseSliceDataset,
    SynapseVolumeDataset,
    build_synapse,
)
from vmbench.data.synapse_prepare import PrepareReport, prepare_synapse
from vmbench.data.synthetic import synth_isic, synth_synapse, synthetic_isic_root, synthetic_synapse_root
from vmbench.data.splits import check_fold
from vmbench.data.transforms import seed_worker
from vmbench.protocols import CV

__all__ = [
    "DataError",
    "HOLDOUT_VAL_CASES",
    "ISICDataset",
    "PAPER_TEST_CASES",
    "PAPER_TRAIN_CASES",
    "PROTOCOLS",
    "PrepareReport",
    "SPLITS",
    "SynapseSliceDataset",
    "SynapseVolumeDataset",
    "build_dataset",
    "dataset_for",
    "build_isic",
    "build_synapse",
    "cache_dir",
    "prepare_synapse",
    "seed_worker",
    "synth_isic",
    "synth_synapse",
    "synthetic_isic_root",
    "synthetic_synapse_root",
]


def _size(img_size) -> tuple[int, int]:
    if isinstance(img_size, int):
        return (img_size, img_size)
    try:
        h, w = (int(v) for v in img_size)
    except (TypeError, ValueError):
        raise DataError(f"img_size {img_size!r} is not an int or an (height, width) pair") from None
    if h <= 0 or w <= 0:
        raise DataError(f"img_size {img_size!r} must be positive")
    return (h, w)


def build_dataset(
    name: str,
    root=None,
    split: str = "train",
    protocol: str = "holdout",
    img_size: int | Sequence[int] | None = None,
    augment: bool | None = None,
    seed: int = 0,
    fold: int | None = None,
    folds: int = 5,
    **kwargs,
):
    """Build split ``split`` of registered dataset ``name`` under ``protocol``.

    ``root`` None: the registered default folder (generated data for the synthetic datasets);
    ``img_size`` None: the dataset's default; ``augment`` None: True for "train" only. ``fold`` and
    ``folds`` choose the cross-validation fold under protocol ``cv`` (ignored otherwise). Extra
    keyword arguments go to the dataset's builder (e.g. ``normalize=``, ``split_seed=``, ``n=``).
    """
    from vmbench.registry import dataset_info

    info = dataset_info(name)  # unknown names: the registry's error with close matches
    check_split_protocol(split, protocol)
    if protocol not in info.protocols:
        raise DataError(f"dataset {name!r} does not support protocol {protocol!r} (it supports {', '.join(info.protocols)})")
    _check_options(name, info.options, kwargs)
    if protocol == CV:  # checked before a generated data set is written
        fold, folds = check_fold(fold, folds)
        kwargs.update(fold=fold, folds=folds)
    size = info.img_size if img_size is None else _size(img_size)
    if augment is None:
        augment = split == "train"
    if root is None:
        root = info.default_root
    dataset = info.builder(root, split, protocol, size, bool(augment), int(seed), **kwargs)
    _check_contract(name, dataset)
    return dataset


# What the engine reads from every dataset (the plug-in contract of vmbench.registry.register_dataset).
_DATASET_ATTRIBUTES = ("name", "split", "protocol", "is_volume", "__len__", "__getitem__")


def _check_contract(name: str, dataset) -> None:
    missing = [a for a in _DATASET_ATTRIBUTES if not hasattr(dataset, a)]
    if not getattr(dataset, "is_volume", True) and not hasattr(dataset, "set_epoch"):
        missing.append("set_epoch")
    if missing:
        raise DataError(f"dataset {name!r}: its builder returned a {type(dataset).__name__} without "
                        f"{', '.join(missing)} (see the dataset contract in vmbench.registry.register_dataset)")
    if dataset.name != name:
        raise DataError(f"dataset {name!r}: its builder returned a dataset named {dataset.name!r}; "
                        "set its name to the registered one (runs are recorded under it)")


def _check_options(name: str, accepted: tuple[str, ...], options: dict) -> None:
    """Unknown builder options (config key data.options) are one clear error, not a TypeError."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            f"data.options: {unknown[0]!r} is not an option of dataset {name!r} (accepted: {', '.join(accepted) or 'none'})"
        )


def dataset_for(cfg: ExperimentConfig, split: str, *, img_size: int | Sequence[int] | None = None,
                augment: bool | None = None):
    """Split ``split`` of the dataset that ``cfg.data`` describes: the one way the engine, the
    sweep and the commands build a dataset from a configuration. ``img_size`` None: ``data.img_size``
    (then the dataset's default)."""
    data = cfg.data
    return build_dataset(data.name, root=data.root, split=split, protocol=data.protocol,
                         img_size=data.img_size if img_size is None else img_size, augment=augment,
                         seed=cfg.train.seed, fold=data.fold, folds=data.folds, **data.options)
