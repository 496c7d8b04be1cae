"""Datasets declared, not coded: a folder or an nnU-Net raw dataset registered at run time under the
user's name.

A declaration is four configuration values, so it travels wherever a configuration does (Ray
workers are separate processes that rebuild the configuration from a dict)::

    data.name: polyps                      # the user's name: what runs, tables and reports say
    data.root: /abs/path/to/polyps         # the folder
    data.options.format: folder            # or nnunet
    data.options.labels: {background: 0, polyp: 255}

Building an :class:`~vmbench.config.ExperimentConfig` whose ``data.options`` has ``format``
registers the dataset in that process (``vmbench.registry.declare_dataset``, the hook this module
installs), so the engine's ``dataset_info(cfg.data.name)`` finds it on any worker. ``labels`` is
filled in once, where the declaration is made (:func:`declare_path`), by reading the masks' values;
workers then read no file to register.

A user dataset is never registered under a name that is taken (so never as ISIC), and a name is
declared once per process with one root and one set of options.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from vmbench.data.folder import ClassMap, FolderLayout, UserDataset, choose_split, find_folder_layout, scan_mask_values
from vmbench.data.nnunet_raw import find_nnunet_layout, read_dataset_json, read_splits_final
from vmbench.errors import DataError
from vmbench.protocols import CV, HOLDOUT, MULTICLASS_2D, POOLED_2D, VOLUME
from vmbench.registry import DATASETS, register_dataset, set_dataset_declarer

__all__ = ["FORMATS", "declare_path", "detect_format", "load_layout", "register_user_dataset"]

FORMATS = ("folder", "nnunet")
DEFAULT_IMG_SIZE = (256, 256)
_DECLARED: dict[str, tuple] = {}  # name -> (root, format, labels) declared in this process


def detect_format(root: str | Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    if (root / "dataset.json").is_file():
        return "nnunet"
    return "folder"


def load_layout(root: str | Path, fmt: str) -> tuple[FolderLayout, ClassMap | None, list | None]:
    """The pairs of ``root`` read as ``fmt``, the classes its own metadata declares (nnU-Net's
    dataset.json) and nnU-Net's folds (splits_final.json), if any."""
    if fmt == "folder":
        return find_folder_layout(root), None, None
    if fmt == "nnunet":
        layout, info = find_nnunet_layout(root)
        folds = read_splits_final(Path(root), {p.id for p in layout.train})
        return layout, info.classes, folds
    raise DataError(f"data.options.format: {fmt!r} is not one of {', '.join(FORMATS)}")


def classes_of(root: str | Path, fmt: str, labels: Any) -> ClassMap:
    if labels is not None:
        return ClassMap.from_option(labels, "data.options.labels")
    layout, declared, _ = load_layout(root, fmt)
    if declared is not None:
        return declared
    masks = [p.mask for p in layout.train + layout.test if p.mask is not None]
    return ClassMap.from_values(scan_mask_values(masks), f"{root}: masks")


def name_for_path(root: Path) -> str:
    """A dataset name from its folder: ``Dataset120_Road`` and ``kvasir-seg`` stay as they are."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", root.resolve().name).strip("-")  # no '.': MLflow refuses it in names
    if not name:
        raise DataError(f"{root}: cannot name a dataset after this folder; declare a name in a search-space file")
    return name


def declare_path(path: str | Path, fmt: str | None = None, labels: Any = None,
                 name: str | None = None) -> dict[str, Any]:
    """The configuration overrides declaring the dataset at ``path`` (see the module docstring)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"--dataset {path}: no such folder")
    root = root.resolve()
    fmt = fmt or detect_format(root)
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r} is not one of {', '.join(FORMATS)} (--dataset-format, data.options.format)")
    classes = classes_of(root, fmt, labels)
    return {"data.name": name or name_for_path(root), "data.root": str(root),
            "data.options.format": fmt, "data.options.labels": classes.to_option()}


def register_user_dataset(name: str, root: str | None, options: dict[str, Any]):
    """Register (once per process) the dataset a configuration declares; returns its DatasetInfo."""
    fmt, labels = options.get("format"), options.get("labels")
    if fmt not in FORMATS:
        raise DataError(f"data.options.format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if not root:
        raise DataError(f"data.root: dataset {name!r} (format {fmt}) needs the folder it is read from")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        # Names reach folder names and MLflow, which refuses '.', ':', '/' in the names it records.
        raise DataError(f"data.name: a declared dataset's name is letters, digits, '_' or '-', got {name!r}")
    key = (str(root), fmt, repr(labels))
    if name in _DECLARED:
        if _DECLARED[name] != key:
            raise DataError(f"dataset {name!r} is declared twice with different folders or labels "
                            f"({_DECLARED[name][0]} and {root}); give each its own name")
        return DATASETS.get(name)
    if name in DATASETS:
        raise DataError(f"dataset name {name!r} is taken by a registered dataset; declare yours under another name")
    classes = classes_of(root, fmt, labels)
    if is_volumes(root, fmt):  # trained as slices, scored per volume (as Synapse)
        register_dataset(name, task="multiclass", num_classes=classes.num_classes, in_chans=1,
                         img_size=DEFAULT_IMG_SIZE, evaluation=VOLUME, class_names=classes.names,
                         description=f"user dataset (nnunet 3D) at {root}", default_root=str(root),
                         protocols=(HOLDOUT, CV))(_builder(name))
        _DECLARED[name] = key
        return DATASETS.get(name)
    binary = classes.binary
    register_dataset(
        name,
        task="binary" if binary else "multiclass",
        num_classes=1 if binary else classes.num_classes,
        in_chans=3,
        img_size=DEFAULT_IMG_SIZE,
        evaluation=POOLED_2D if binary else MULTICLASS_2D,
        class_names=classes.names[1:] if binary else classes.names,
        description=f"user dataset ({fmt}) at {root}",
        default_root=str(root),
        protocols=(HOLDOUT, CV),
    )(_builder(name))
    _DECLARED[name] = key
    return DATASETS.get(name)


def is_volumes(root, fmt: str) -> bool:
    """Whether the dataset holds 3D volumes (nnU-Net's file_ending .nii.gz/.nii)."""
    return fmt == "nnunet" and read_dataset_json(Path(root)).is_3d


def _builder(name: str):
    def build(root, split="train", protocol=HOLDOUT, img_size=DEFAULT_IMG_SIZE, augment=None, seed=0, *,
              format: str = "folder", labels: dict | None = None, split_seed: int = 0,
              normalize: str = "minmax-imagenet", augmentation: str = "vmunet",
              fold: int | None = None, folds: int = 5) -> UserDataset:
        return build_user(name, root, split, protocol, img_size, augment, seed, fmt=format, labels=labels,
                          split_seed=split_seed, normalize=normalize, augmentation=augmentation, fold=fold, folds=folds)

    build.__name__ = f"build_{name}"
    return build


def build_user(name: str, root, split: str, protocol: str, img_size: Sequence[int], augment: bool | None, seed: int,
               *, fmt: str, labels: Any, split_seed: int = 0, normalize: str = "minmax-imagenet",
               augmentation: str = "vmunet", fold: int | None = None, folds: int = 5) -> UserDataset:
    layout, declared, cv_folds = load_layout(root, fmt)
    classes = ClassMap.from_option(labels, "data.options.labels") if labels is not None else declared
    if classes is None:
        classes = classes_of(root, fmt, None)
    if protocol == CV and fold is None:
        raise DataError("data.fold: protocol 'cv' needs the fold to train")
    pairs, source = choose_split(layout.train, layout.test, split, protocol, int(split_seed), fold, folds,
                                 layout.splits_file, cv_folds)
    if is_volumes(root, fmt):
        from vmbench.data.nnunet_volumes import NiftiSliceDataset, NiftiVolumeDataset

        if split == "train":
            return NiftiSliceDataset(pairs, name=name, split=split, protocol=protocol, img_size=img_size,
                                     augment=True if augment is None else augment, seed=seed, classes=classes,
                                     split_source=source)
        return NiftiVolumeDataset(pairs, name=name, split=split, protocol=protocol, img_size=img_size,
                                  classes=classes, split_source=source)
    return UserDataset(pairs, name=name, split=split, protocol=protocol, img_size=img_size,
                       augment=split == "train" if augment is None else augment, seed=seed, classes=classes,
                       normalize=normalize, augmentation=augmentation, split_source=source)


set_dataset_declarer(register_user_dataset)
