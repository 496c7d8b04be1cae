"""Protocol cv: nnU-Net-style folds over the training pool, test split untouched."""

from __future__ import annotations

import pytest
from sklearn.model_selection import KFold

from vmbench.data import build_dataset
from vmbench.data.splits import CV_SEED, kfold_splits
from vmbench.errors import DataError


@pytest.mark.parametrize("n, folds", [(5, 5), (18, 5), (23, 3), (107, 5)])
def test_folds_equal_nnunets_kfold(n, folds):
    """nnU-Net: KFold(n_splits, shuffle=True, random_state=12345) over the sorted ids (the oracle)."""
    ids = [f"case{i:04d}" for i in range(n)][::-1]  # given unsorted: sorting is part of the rule
    keys = sorted(ids)
    expected = [
        {"train": [keys[i] for i in tr], "val": [keys[i] for i in va]}
        for tr, va in KFold(n_splits=folds, shuffle=True, random_state=12345).split(keys)
    ]
    assert kfold_splits(ids, folds) == expected
    assert CV_SEED == 12345


def test_folds_partition_the_pool():
    ids = [f"ISIC_{i:07d}" for i in range(41)]
    splits = kfold_splits(ids, 4)
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == set(ids) and sum(map(len, vals)) == len(ids)
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and set(s["train"]) | set(s["val"]) == set(ids)
    assert sorted(map(len, vals)) == [10, 10, 10, 11]


def test_isic_cv_keeps_the_holdout_test_split():
    common = dict(img_size=32, n=60)
    holdout = {split: build_dataset("synthetic-isic", split=split, protocol="holdout", **common) for split in ("train", "val", "test")}
    pool = {s.id for split in ("train", "val") for s in holdout[split].samples}
    test_ids = {s.id for s in holdout["test"].samples}
    seen_val = set()
    for fold in range(3):
        train = build_dataset("synthetic-isic", split="train", protocol="cv", fold=fold, folds=3, **common)
        val = build_dataset("synthetic-isic", split="val", protocol="cv", fold=fold, folds=3, **common)
        test = build_dataset("synthetic-isic", split="test", protocol="cv", fold=fold, folds=3, **common)
        tr, va = {s.id for s in train.samples}, {s.id for s in val.samples}
        assert tr | va == pool and not tr & va and not (tr | va) & test_ids
        assert {s.id for s in test.samples} == test_ids
        assert train.cv_splits == val.cv_splits and [set(f["val"]) for f in train.cv_splits][fold] == va
        assert not train.val_is_test and train.normalize == holdout["train"].normalize
        seen_val |= va
    assert seen_val == pool


def test_synapse_cv_folds_whole_volumes():
    common = dict(img_size=32, n_cases=30, size=32, slices=(4, 6))
    train = build_dataset("synthetic-synapse", split="train", protocol="cv", fold=2, folds=3, **common)
    val = build_dataset("synthetic-synapse", split="val", protocol="cv", fold=2, folds=3, **common)
    test = build_dataset("synthetic-synapse", split="test", protocol="cv", fold=2, folds=3, **common)
    val_cases = {val[i]["id"] for i in range(len(val))}
    assert val.is_volume and len(val_cases) == 6  # 18 training cases / 3
    assert not set(train.cases) & val_cases and len(train.cases) == 12
    assert {item.split("_slice")[0] for item, _ in train.slices} == set(train.cases)
    official_test = {"case0001", "case0002", "case0003", "case0004", "case0008", "case0022", "case0025",
                     "case0029", "case0032", "case0035", "case0036", "case0038"}  # TransUNet test_vol.txt
    assert {test[i]["id"] for i in range(len(test))} == official_test


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "data.fold: protocol 'cv' needs the fold"),
        ({"fold": 3, "folds": 3}, "data.fold: expected an integer in 0 .. 2"),
        ({"fold": 0, "folds": 1}, "data.folds: cross-validation needs an integer number of folds >= 2"),
        ({"fold": True, "folds": 3}, "data.fold: expected an integer"),
    ],
)
def test_bad_folds_are_one_line(kwargs, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_dataset("synthetic-isic", split="train", protocol="cv", img_size=32, n=20, **kwargs)


def test_too_few_cases_for_the_folds():
    with pytest.raises(DataError, match="needs at least 5 cases"):
        kfold_splits(["a", "b", "c"], 5)


def test_a_dataset_that_does_not_declare_cv_refuses_it(monkeypatch):
    from dataclasses import replace

    import vmbench.data as data
    from vmbench.registry import DATASETS, dataset_info

    info = dataset_info("synthetic-isic")
    monkeypatch.setitem(DATASETS._entries, "synthetic-isic", replace(info, protocols=("holdout", "paper")))
    with pytest.raises(DataError, match="does not support protocol 'cv'"):
        data.build_dataset("synthetic-isic", split="train", protocol="cv", fold=0, folds=3, img_size=32)
