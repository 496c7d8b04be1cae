"""ISIC metrics on arrays counted by hand; Synapse dc/hd95 against medpy (test-only dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vmbench.metrics import (
    PooledConfusion,
    SynapseCaseResult,
    binary_dc,
    binary_hd95,
    isic_per_image,
    isic_pooled,
    max_surface_distance,
    summarize_synapse,
    synapse_case_metrics,
)

medpy_binary = pytest.importorskip("medpy.metric.binary")

# Two 2x3 images; pooled P1 counts worked out pixel by pixel:
#   image 1  pred(>=.5) [[1,1,0],[0,1,0]]  gt(>=.5) [[1,0,1],[1,1,0]] -> TP 2, FP 1, FN 2, TN 1
#   image 2  pred       [[0,0,0],[1,1,1]]  gt       [[0,0,0],[1,0,0]] -> TP 1, FP 2, FN 0, TN 3
#   total TP 3, FP 3, FN 2, TN 4 (12 pixels)
PROBS = np.array(
    [
        [[0.9, 0.5, 0.2], [0.49, 0.7, 0.0]],
        [[0.1, 0.1, 0.1], [0.6, 0.6, 0.6]],
    ]
)
MASKS = np.array(
    [
        [[1.0, 0.0, 1.0], [1.0, 0.5, 0.0]],
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
    ]
)


def test_isic_pooled_hand_counted():
    r = isic_pooled(PROBS, MASKS)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 3, 2, 4)
    assert r["miou"] == pytest.approx(3 / 8)
    assert r["dsc"] == pytest.approx(6 / 11)
    assert r["acc"] == pytest.approx(7 / 12)
    assert r["spe"] == pytest.approx(4 / 7)
    assert r["sen"] == pytest.approx(3 / 5)


def test_isic_pooled_threshold_and_inputs():
    # threshold 0.65 drops the 0.5, 0.6 (x3) predictions: pred = {0.9, 0.7}
    r = isic_pooled(PROBS, MASKS, threshold=0.65)
    # image 1: TP at (0,0), TP at (1,1) [gt 0.5 counts], FN (0,2), (1,0); image 2: FN (1,0)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 0, 3, 7)
    # torch tensors, a channel axis on one side only
    rt = isic_pooled(torch.tensor(PROBS).unsqueeze(1), torch.tensor(MASKS))
    assert rt == isic_pooled(PROBS, MASKS)
    with pytest.raises(ValueError, match="shapes"):
        isic_pooled(PROBS, MASKS[:, :1])


def test_isic_pooled_zero_denominators():
    z = np.zeros((2, 3, 3))
    r = isic_pooled(z, z)  # nothing predicted, nothing to find
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (0, 0, 0, 18)
    assert r["miou"] == 0 and r["dsc"] == 0 and r["sen"] == 0
    assert r["spe"] == 1 and r["acc"] == 1
    o = np.ones((2, 3, 3))
    r = isic_pooled(o, o)  # everything foreground: TN + FP = 0
    assert r["spe"] == 0 and r["sen"] == 1 and r["miou"] == 1 and r["dsc"] == 1
    r = isic_pooled(np.zeros(0), np.zeros(0))  # no pixels at all
    assert all(r[k] == 0 for k in ("miou", "dsc", "acc", "spe", "sen", "tp", "fp", "fn", "tn"))


def test_pooled_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    probs = rng.random((7, 1, 16, 16))
    masks = (rng.random((7, 1, 16, 16)) > 0.7).astype(np.float32)
    acc = PooledConfusion()
    for start in range(0, 7, 3):
        acc.update(torch.from_numpy(probs[start : start + 3]), masks[start : start + 3])
    assert acc.compute() == isic_pooled(probs, masks)
    assert acc.total == probs.size
    other = PooledConfusion().update(probs[:2], masks[:2])
    merged = PooledConfusion().update(probs[2:], masks[2:]).merge(other)
    assert merged.compute() == isic_pooled(probs, masks)
    acc.reset()
    assert acc.total == 0


def test_isic_per_image_hand_computed():
    probs = np.concatenate([PROBS, np.zeros((1, 2, 3))])
    masks = np.concatenate([MASKS, np.zeros((1, 2, 3))])
    r = isic_per_image(probs, masks)
    s = 0.001
    # strict > 0.5 on both sides (TransFuse): the 0.5 prediction and the 0.5 mask pixel are background
    # image 1: pred [[1,0,0],[0,1,0]], gt [[1,0,1],[1,0,0]]: I 1, |P| 2, |G| 3, 3 of 6 pixels agree
    # image 2: pred [[0,0,0],[1,1,1]], gt [[0,0,0],[1,0,0]]: I 1, |P| 3, |G| 1, 4 of 6 agree
    # image 3: both empty: TransFuse's 2 (0 + s) / (0 + s) = 2, IoU 1
    exp_dice = [2 * (1 + s) / (5 + s), 2 * (1 + s) / (4 + s), 2.0]
    exp_iou = [(1 + s) / (4 + s), (1 + s) / (3 + s), 1.0]
    np.testing.assert_allclose(r["dice"], exp_dice, rtol=1e-12)
    np.testing.assert_allclose(r["iou"], exp_iou, rtol=1e-12)
    np.testing.assert_allclose(r["acc"], [3 / 6, 4 / 6, 1.0], rtol=1e-12)
    assert r["mean_dice"] == pytest.approx(np.mean(exp_dice))
    assert r["mean_iou"] == pytest.approx(np.mean(exp_iou))
    assert r["mean_acc"] == pytest.approx((0.5 + 4 / 6 + 1) / 3)
    rt = isic_per_image(torch.tensor(probs).unsqueeze(1), torch.tensor(masks).unsqueeze(1))
    np.testing.assert_allclose(rt["dice"], exp_dice, rtol=1e-12)
    with pytest.raises(ValueError, match="leading axis"):
        isic_per_image(PROBS[0], MASKS[0])


# ---------------------------------------------------------------------------------------------
# Synapse: dc / hd95 against medpy
# ---------------------------------------------------------------------------------------------


def _random_pair(rng, shape):
    a = rng.random(shape) < rng.uniform(0.02, 0.4)
    b = rng.random(shape) < rng.uniform(0.02, 0.4)
    return a, b


def _blob(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return d2 <= radius**2


@pytest.mark.parametrize("seed", range(6))
def test_dc_hd95_match_medpy_random(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(6, 22, size=3))
    a, b = _random_pair(rng, shape)
    spacing = tuple(float(s) for s in rng.uniform(0.4, 3.0, size=3))
    assert binary_dc(a, b) == pytest.approx(medpy_binary.dc(a, b), abs=1e-12)
    for conn in (1, 2, 3):
        for sp in (None, spacing, 1.7):
            ours = binary_hd95(a, b, spacing=sp, connectivity=conn)
            ref = medpy_binary.hd95(a, b, voxelspacing=sp, connectivity=conn)
            assert ours == pytest.approx(ref, abs=1e-6), (conn, sp)


def test_hd95_matches_medpy_structured_cases():
    shape = (15, 18, 12)
    cases = []
    a = _blob(shape, (7, 8, 6), 4)
    b = _blob(shape, (8, 10, 5), 3.5)
    cases.append((a, b))  # overlapping balls
    one = np.zeros(shape, bool)
    one[3, 4, 5] = True
    cases.append((one, b))  # single voxel vs ball
    two = np.zeros(shape, bool)
    two[10, 2, 1] = True
    cases.append((one, two))  # single voxel vs single voxel
    edge = np.zeros(shape, bool)
    edge[0:4, :, 0:3] = True  # touches four faces of the volume
    cases.append((edge, a))
    full = np.ones(shape, bool)
    cases.append((full, one))  # whole volume: its surface is the array boundary
    corner = np.zeros(shape, bool)
    corner[-2:, -3:, -1:] = True
    cases.append((corner, edge))
    cases.append((a, a))  # identical: 0
    for conn in (1, 2, 3):
        for sp in (None, (0.78, 0.78, 3.0)):
            for x, y in cases:
                ours = binary_hd95(x, y, sp, conn)
                ref = medpy_binary.hd95(x, y, voxelspacing=sp, connectivity=conn)
                assert ours == pytest.approx(ref, abs=1e-6)
                assert binary_hd95(y, x, sp, conn) == pytest.approx(ref, abs=1e-6)  # symmetric


def test_hd95_2d_and_torch_inputs():
    rng = np.random.default_rng(11)
    a, b = _random_pair(rng, (20, 17))
    ref = medpy_binary.hd95(a, b, voxelspacing=(0.5, 2.0), connectivity=2)
    ours = binary_hd95(torch.from_numpy(a), torch.from_numpy(b), (0.5, 2.0), 2)
    assert ours == pytest.approx(ref, abs=1e-6)
    assert binary_dc(torch.from_numpy(a).int(), b) == pytest.approx(medpy_binary.dc(a, b))


def test_empty_inputs():
    z = np.zeros((4, 4, 4), bool)
    o = z.copy()
    o[1, 1, 1] = True
    # Both empty: medpy means 1.0 (its ZeroDivisionError fallback, which numpy 1.x reaches); with
    # numpy 2 its count_nonzero returns numpy ints and the division gives NaN instead. We keep 1.0.
    assert binary_dc(z, z) == 1.0
    with np.errstate(invalid="ignore"):
        assert medpy_binary.dc(z, z) == 1.0 or math.isnan(medpy_binary.dc(z, z))
    assert binary_dc(o, z) == medpy_binary.dc(o, z) == 0.0
    for x, y in ((z, o), (o, z), (z, z)):
        with pytest.raises(RuntimeError):
            medpy_binary.hd95(x, y)
        with pytest.raises(RuntimeError, match="no object"):
            binary_hd95(x, y)
    with pytest.raises(ValueError, match="shapes"):
        binary_hd95(o, o[:2])


def test_max_surface_distance():
    assert max_surface_distance((3, 5)) == pytest.approx(math.hypot(2, 4))
    assert max_surface_distance((3, 5, 2), (2.0, 1.0, 3.0)) == pytest.approx(math.sqrt(16 + 16 + 9))


# ---------------------------------------------------------------------------------------------
# Synapse case metrics and summary
# ---------------------------------------------------------------------------------------------

SHAPE = (12, 14, 10)
SPACING = (0.7, 0.7, 2.5)


def _case_volumes():
    """num_classes 5: class 1 in both, 2 predicted only, 3 in GT only, 4 in neither."""
    pred = np.zeros(SHAPE, np.int64)
    gt = np.zeros(SHAPE, np.int64)
    gt[_blob(SHAPE, (5, 6, 4), 3.2)] = 1
    pred[_blob(SHAPE, (6, 7, 5), 2.8)] = 1
    pred[0:2, 0:3, 8:10] = 2
    gt[9:12, 10:14, 0:2] = 3
    return pred, gt


def test_synapse_case_metrics_paper_mode():
    pred, gt = _case_volumes()
    r = synapse_case_metrics(pred, gt, num_classes=5, mode="paper", spacing=SPACING)
    assert isinstance(r, SynapseCaseResult) and r.classes == (1, 2, 3, 4) and r.spacing is None
    p1, g1 = pred == 1, gt == 1
    exp_dice = [medpy_binary.dc(p1, g1), 1.0, 0.0, 0.0]
    exp_hd = [medpy_binary.hd95(p1, g1), 0.0, 0.0, 0.0]  # voxel units: spacing ignored
    np.testing.assert_allclose(r.dice, exp_dice, atol=1e-12)
    np.testing.assert_allclose(r.hd95, exp_hd, atol=1e-6)
    np.testing.assert_array_equal(r.pred_empty, [False, False, True, True])
    np.testing.assert_array_equal(r.gt_empty, [False, True, False, True])
    assert r.as_array().shape == (4, 2)
    rows = r.rows()
    assert len(rows) == 4 and rows[1]["class"] == 2 and rows[1]["dice"] == 1.0
    # torch tensors, float labels
    rt = synapse_case_metrics(torch.from_numpy(pred).float(), torch.from_numpy(gt), num_classes=5)
    np.testing.assert_allclose(rt.hd95, exp_hd, atol=1e-6)


def test_synapse_case_metrics_strict_mode():
    pred, gt = _case_volumes()
    r = synapse_case_metrics(pred, gt, num_classes=5, mode="strict", spacing=SPACING, case_id="case0001")
    p1, g1 = pred == 1, gt == 1
    diag = math.sqrt((11 * 0.7) ** 2 + (13 * 0.7) ** 2 + (9 * 2.5) ** 2)
    assert r.dice[0] == pytest.approx(medpy_binary.dc(p1, g1))
    assert r.hd95[0] == pytest.approx(medpy_binary.hd95(p1, g1, voxelspacing=SPACING), abs=1e-6)
    assert r.dice[1] == 0.0 and math.isnan(r.hd95[1])  # false positive organ
    assert r.dice[2] == 0.0 and r.hd95[2] == pytest.approx(diag)  # missed organ
    assert math.isnan(r.dice[3]) and math.isnan(r.hd95[3])  # absent and not predicted
    assert r.spacing == SPACING and r.case_id == "case0001" and r.rows()[0]["case"] == "case0001"
    unit = synapse_case_metrics(pred, gt, num_classes=5, mode="strict")
    assert unit.hd95[0] == pytest.approx(medpy_binary.hd95(p1, g1), abs=1e-6)
    assert unit.hd95[2] == pytest.approx(math.sqrt(11**2 + 13**2 + 9**2))
    with pytest.raises(ValueError, match="mode"):
        synapse_case_metrics(pred, gt, mode="loose")
    with pytest.raises(ValueError, match="shapes"):
        synapse_case_metrics(pred, gt[:-1])


def _result(dice, hd, mode):
    k = len(dice)
    return SynapseCaseResult(
        dice=np.asarray(dice, float),
        hd95=np.asarray(hd, float),
        classes=tuple(range(1, k + 1)),
        mode=mode,
        pred_empty=np.zeros(k, bool),
        gt_empty=np.zeros(k, bool),
    )


def test_summarize_paper_and_strict():
    nan = float("nan")
    paper = summarize_synapse(
        [_result([0.8, 1.0, 0.0], [4.0, 0.0, 0.0], "paper"), _result([0.6, 0.5, 0.2], [2.0, 6.0, 10.0], "paper")]
    )
    np.testing.assert_allclose(paper.dice_per_class, [0.7, 0.75, 0.1])
    np.testing.assert_allclose(paper.hd95_per_class, [3.0, 3.0, 5.0])
    assert paper.mean_dice == pytest.approx((0.7 + 0.75 + 0.1) / 3)
    assert paper.mean_hd95 == pytest.approx(11 / 3)
    assert paper.n_cases == 2 and paper.as_dict()["dice_class2"] == pytest.approx(0.75)

    strict = summarize_synapse(
        [
            _result([0.8, nan, 0.0], [4.0, nan, nan], "strict"),
            _result([0.6, nan, 0.2], [2.0, nan, 10.0], "strict"),
        ]
    )
    np.testing.assert_allclose(strict.dice_per_class, [0.7, nan, 0.1])
    np.testing.assert_allclose(strict.hd95_per_class, [3.0, nan, 10.0])
    np.testing.assert_array_equal(strict.n_dice, [2, 0, 2])
    np.testing.assert_array_equal(strict.n_hd95, [2, 0, 1])
    assert strict.mean_dice == pytest.approx(0.4)  # class 2 has no value and is left out
    assert strict.mean_hd95 == pytest.approx(6.5)

    with pytest.raises(ValueError, match="mix modes"):
        summarize_synapse([_result([1.0], [0.0], "paper"), _result([1.0], [0.0], "strict")])
    with pytest.raises(ValueError):
        summarize_synapse([])


def test_summarize_from_case_metrics_eight_classes():
    rng = np.random.default_rng(3)
    results, volumes = [], []
    for _ in range(3):
        gt = rng.integers(0, 9, size=(6, 10, 10))
        pred = np.where(rng.random(gt.shape) < 0.8, gt, rng.integers(0, 9, size=gt.shape))
        volumes.append((pred, gt))
        results.append(synapse_case_metrics(pred, gt, num_classes=9))
    s = summarize_synapse(results)
    assert s.classes == tuple(range(1, 9))
    ref_dice = np.array([[medpy_binary.dc(p == c, g == c) for c in range(1, 9)] for p, g in volumes])
    ref_hd = np.array([[medpy_binary.hd95(p == c, g == c) for c in range(1, 9)] for p, g in volumes])
    np.testing.assert_allclose(s.dice_per_class, ref_dice.mean(0), atol=1e-12)
    np.testing.assert_allclose(s.hd95_per_class, ref_hd.mean(0), atol=1e-6)
    assert s.mean_dice == pytest.approx(ref_dice.mean(0).mean())
    assert s.mean_hd95 == pytest.approx(ref_hd.mean(0).mean())
