"""The ISIC Challenge's Task 1 metrics and native-resolution scoring.

Oracles: the ISIC Challenge's own scorer, ``isic-challenge-scoring`` 5.6.0 (ImageMarkup), run on
PNG files written here; and counts taken from the released mask files with numpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vmbench.metrics import isic_challenge_per_image

scoring = pytest.importorskip("isic_challenge_scoring.segmentation", reason="isic-challenge-scoring (dev extra)")
isic_metrics = pytest.importorskip("isic_challenge_scoring.metrics")


def _cases(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random lesion-like pairs of varied sizes, plus the scorer's corner cases."""
    cases = []
    for _ in range(12):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 30)
        truth = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        pred = (yy - cy - rng.normal(0, 4)) ** 2 + (xx - cx - rng.normal(0, 4)) ** 2 < (r * rng.uniform(0.5, 1.5)) ** 2
        cases.append((truth, pred))
    empty = np.zeros((16, 24), bool)
    full = np.ones((16, 24), bool)
    cases += [(empty, empty), (empty, full), (full, empty), (full, full)]  # the scorer's 1.0 conventions
    return cases


def test_per_image_scores_match_the_isic_challenge_scorer(tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    ours = []
    for k, (truth, pred) in enumerate(_cases(np.random.default_rng(7))):
        Image.fromarray(truth.astype(np.uint8) * 255).save(truth_dir / f"ISIC_{k:07d}_segmentation.png")
        Image.fromarray(pred.astype(np.uint8) * 255).save(pred_dir / f"ISIC_{k:07d}.png")
        ours.append(isic_challenge_per_image(pred, truth))
    official = scoring.SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    for key in ("accuracy", "sensitivity", "specificity", "jaccard", "threshold_jaccard", "dice"):
        assert np.mean([o[key] for o in ours]) == pytest.approx(official[key], abs=1e-12), key
    # The threshold bites: some image scores between 0 and 0.65 and counts as 0 in the ranking metric.
    assert any(0 < o["jaccard"] < 0.65 and o["threshold_jaccard"] == 0 for o in ours)


class _Constant(torch.nn.Module):
    """Logits of one value everywhere: the prediction is the same at every size."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.value) + 0 * self.anchor


@pytest.fixture(scope="module")
def varied_isic(tmp_path_factory):
    from vmbench.data import build_dataset, synth_isic

    root = tmp_path_factory.mktemp("isic-sizes")
    synth_isic(root, n=20, seed=3, layout="challenge", year=2018, size_range=(40, 90))
    return build_dataset("synthetic-isic", root=str(root), split="test", img_size=32)


def test_native_resolution_scores_each_image_at_its_released_size(varied_isic):
    from vmbench.engine import evaluate_2d

    data = varied_isic
    sizes = {data.native_size(i) for i in range(len(data))}
    assert len(sizes) > 1 and (32, 32) not in sizes  # varied, and never the training size
    native = evaluate_2d(_Constant(10.0), data, torch.device("cpu"), native=True)
    # Independent: everything predicted foreground, so per image Jaccard = |truth| / pixels of the
    # released mask, and the pooled counts are those of the released masks.
    masks = [np.asarray(Image.open(s.mask).convert("L")) > 127 for s in data.samples]
    expected_j = [float(m.mean()) for m in masks]
    assert [r["jaccard"] for r in native.rows] == pytest.approx(expected_j, abs=1e-12)
    cm = [{"TP": int(m.sum()), "FP": int((~m).sum()), "FN": 0, "TN": 0} for m in masks]
    assert native.summary["threshold_jaccard"] == pytest.approx(
        np.mean([isic_metrics.binary_threshold_jaccard(pd.Series(c)) for c in cm]), abs=1e-12)
    assert native.summary["tp"] + native.summary["fp"] == sum(m.size for m in masks)
    tp, fp = sum(c["TP"] for c in cm), sum(c["FP"] for c in cm)
    assert native.summary["dsc"] == pytest.approx(2 * tp / (2 * tp + fp))
    assert native.resolution == "native"
    at_training = evaluate_2d(_Constant(10.0), data, torch.device("cpu"))
    assert at_training.resolution == "training" and at_training.summary["tp"] + at_training.summary["fp"] == 32 * 32 * len(data)


def test_an_empty_prediction_scores_zero_jaccard_where_there_is_a_lesion(varied_isic):
    from vmbench.engine import evaluate_2d

    result = evaluate_2d(_Constant(-10.0), varied_isic, torch.device("cpu"), native=True)
    assert all(r["jaccard"] == 0.0 and r["threshold_jaccard"] == 0.0 for r in result.rows)
    assert result.summary["sen"] == 0.0


def test_the_protocol_chooses_where_the_test_is_scored():
    from vmbench.config import ExperimentConfig
    from vmbench.engine.evaluation import eval_resolution

    assert eval_resolution(ExperimentConfig.from_dict({})) == "native"
    assert eval_resolution(ExperimentConfig.from_dict({"data": {"protocol": "paper"}})) == "training"  # as published
    assert eval_resolution(ExperimentConfig.from_dict({"data": {"protocol": "paper", "eval_resolution": "native"}})) == "native"
