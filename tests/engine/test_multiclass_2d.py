"""Multi-class 2D evaluation (user datasets): per image and class Dice of the argmax map, at each
image's own size; expected values computed here from the generator's drawing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import user_formats as F  # noqa: E402  (tests/data/user_formats.py: data in the formats users bring)


class _AlwaysClass(torch.nn.Module):
    """Logits that pick one class everywhere, at any size."""

    def __init__(self, cls: int, num_classes: int = 3):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[2:])
        logits[:, self.cls] = 10.0
        return logits + 0 * self.anchor


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 2.0 * (pred & truth).sum() / total if total else float("nan")


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    """The configuration overrides that declare a generated 3-class PNG folder, and its drawing."""
    from vmbench.data.user import declare_path

    root, truth = F.folder_multiclass(tmp_path_factory.mktemp("mc") / "mc3")
    return {**declare_path(root, name="t-mc-eval"), "data.img_size": 32}, truth


@pytest.fixture(scope="module")
def multiclass_test(declared):
    from vmbench.config import ExperimentConfig
    from vmbench.data import dataset_for

    overrides, truth = declared
    return dataset_for(ExperimentConfig().with_overrides(overrides), "test"), truth


def test_multiclass_scores_each_class_at_the_released_size(multiclass_test):
    from vmbench.engine.evaluation import evaluate_multiclass_2d

    data, truth = multiclass_test
    result = evaluate_multiclass_2d(_AlwaysClass(1), data, torch.device("cpu"), native=True)
    expected = {}
    for case in data.ids:
        ids = truth[case]
        everything = np.ones_like(ids, dtype=bool)
        expected[(case, 1)] = _dice(everything, ids == 1)
        expected[(case, 2)] = _dice(np.zeros_like(everything), ids == 2)  # 0 where class 2 is drawn, else NaN
    got = {(r["id"], r["class"]): r["dice"] for r in result.rows}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key
    assert result.summary["dsc_class1"] == pytest.approx(np.nanmean([v for (c, k), v in expected.items() if k == 1]))
    assert result.summary["dsc"] == pytest.approx(np.nanmean(list(expected.values())))
    assert result.resolution == "native" and result.summary["n_images"] == len(data)


def test_a_multiclass_folder_trains_and_is_scored(declared, tmp_path):
    from vmbench.config import ExperimentConfig
    from vmbench.engine import fit

    overrides, _ = declared
    cfg = ExperimentConfig().with_overrides({**overrides, "model.name": "unet", "model.overrides.base_channels": 4,
                                            "train.epochs": 1, "train.batch_size": 4, "train.progress": False})
    result = fit(cfg, tmp_path / "run")
    assert {"dsc", "dsc_class1", "dsc_class2"} <= set(result.test) and 0 <= result.test["dsc"] <= 1
    assert "val_dsc" in result.history[-1] and "val_loss" in result.history[-1]
    assert (tmp_path / "run" / "eval" / "test" / "per_case.csv").read_text().startswith("id,class,organ,dice")
