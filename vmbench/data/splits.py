"""Cross-validation folds over a training pool, as nnU-Net makes them.

nnU-Net v2 (MIC-DKFZ/nnUNet@0e495086, ``nnunetv2/utilities/crossval_split.py``
``generate_crossval_split``; ``nnUNetTrainer.do_split`` sorts the identifiers first) uses
scikit-learn's ``KFold(n_splits, shuffle=True, random_state=12345)`` on the sorted case ids. The
same folds are computed here with NumPy alone (KFold shuffles ``arange(n)`` with a
``RandomState(seed)`` and cuts it into ``n_splits`` consecutive parts, the first ``n % n_splits`` one
longer), so that vmbench's folds of a data set equal nnU-Net's for the same ids. The test split is
never part of the pool.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vmbench.errors import DataError

__all__ = ["CV_SEED", "check_fold", "fold_ids", "kfold_splits"]

CV_SEED = 12345  # nnU-Net's fixed split seed


def check_fold(fold: object, folds: object, where: str = "data") -> tuple[int, int]:
    """``(fold, folds)`` as ints, or a DataError naming ``where``.fold / ``where``.folds."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise DataError(f"{where}.folds: cross-validation needs an integer number of folds >= 2, got {folds!r}")
    if fold is None:
        raise DataError(f"{where}.fold: protocol 'cv' needs the fold to train (0 .. {folds - 1})")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise DataError(f"{where}.fold: expected an integer in 0 .. {folds - 1}, got {fold!r}")
    return fold, folds


def kfold_splits(ids: Sequence[str], folds: int = 5, seed: int = CV_SEED) -> list[dict[str, list[str]]]:
    """``[{"train": [...], "val": [...]}, ...]``: ``folds`` disjoint validation parts covering ``ids``."""
    keys = sorted(set(map(str, ids)))
    if len(keys) < folds:
        raise DataError(f"{folds}-fold cross-validation needs at least {folds} cases in the training pool, found {len(keys)}")
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, len(keys) // folds)
    sizes[: len(keys) % folds] += 1
    splits, start = [], 0
    for size in sizes:
        val = np.zeros(len(keys), dtype=bool)
        val[order[start : start + size]] = True
        start += size
        splits.append({"train": [k for k, v in zip(keys, val) if not v], "val": [k for k, v in zip(keys, val) if v]})
    return splits


def fold_ids(ids: Sequence[str], split: str, fold: int, folds: int, seed: int = CV_SEED) -> list[str]:
    """The ids of ``split`` ("train" or "val") of ``fold``."""
    if split not in ("train", "val"):
        raise DataError(f"cross-validation folds split the training pool into train and val, not {split!r}")
    return kfold_splits(ids, folds, seed)[fold][split]
