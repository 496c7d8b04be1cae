"""Losses against independent computations written here (not the implementation's code paths)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vmbench.config import ExperimentConfig
from vmbench.engine import builders
from vmbench.errors import ConfigError, UnknownNameError
from vmbench.losses import (
    LOSS_CONFIG_KEYS,
    LOSSES,
    TRANSFUSE_WEIGHTS,
    BceDiceLoss,
    CeDiceLoss,
    DeepSupervisionLoss,
    NnUNetDiceBCELoss,
    NnUNetDiceCELoss,
    StructureLoss,
    build_loss,
    default_loss_for,
    list_losses,
    loss_info,
    register_loss,
    transfuse_loss,
)

# ---------------------------------------------------------------------------------------------
# references written out element by element, in float64
# ---------------------------------------------------------------------------------------------


def official_bce_dice(logits, target, wb=1.0, wd=1.0):
    """VM-UNet's formulation: BCELoss on sigmoid outputs + per-sample soft Dice (smooth 1)."""
    b = logits.shape[0]
    p = torch.sigmoid(logits.double()).reshape(b, -1)
    t = target.double().reshape(b, -1)
    bce = nn.BCELoss()(p, t)
    scores = []
    for i in range(b):
        num = 2 * (p[i] * t[i]).sum() + 1
        den = p[i].sum() + t[i].sum() + 1
        scores.append(num / den)
    dice = 1 - sum(scores) / b
    return wb * bce + wd * dice


def reference_ce_dice(logits, labels, num_classes, include_background=True, class_weights=None, smooth=1e-5):
    x = logits.double()
    e = torch.exp(x - x.max(dim=1, keepdim=True).values)
    soft = e / e.sum(dim=1, keepdim=True)
    # cross-entropy: -log softmax at the true class, (weighted) mean over pixels
    logsoft = torch.log(soft)
    b = x.shape[0]
    nll_sum, w_sum = 0.0, 0.0
    flat_labels = labels.reshape(b, -1)
    flat_log = logsoft.reshape(b, num_classes, -1)
    for i in range(b):
        for j in range(flat_labels.shape[1]):
            y = int(flat_labels[i, j])
            w = 1.0 if class_weights is None else float(class_weights[y])
            nll_sum += -w * float(flat_log[i, y, j])
            w_sum += w
    ce = nll_sum / w_sum
    first = 0 if include_background else 1
    losses, weights = [], []
    for c in range(first, num_classes):
        t = (labels == c).double()
        s = soft[:, c]
        inter = (s * t).sum()
        val = 1 - (2 * inter + smooth) / ((s * s).sum() + (t * t).sum() + smooth)
        losses.append(float(val))
        weights.append(1.0 if class_weights is None else float(class_weights[c]))
    dice = sum(l * w for l, w in zip(losses, weights)) / sum(weights)
    return ce, dice


# ---------------------------------------------------------------------------------------------
# BceDiceLoss
# ---------------------------------------------------------------------------------------------


def test_bce_dice_hand_computed_zero_logits():
    # logits 0 -> p = 0.5 everywhere; BCE = log 2 whatever the target.
    logits = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    # sample 1: sum(pt) = 1, sum(p) = 2, sum(t) = 2 -> (2 + 1) / (2 + 2 + 1) = 0.6
    # sample 2: sum(pt) = 0, sum(p) = 2, sum(t) = 0 -> 1 / 3
    expected = math.log(2) + 1 - (0.6 + 1 / 3) / 2
    assert BceDiceLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bce_dice_matches_official_formulation(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 1, 8, 7, generator=g) * 3
    target = (torch.rand(3, 1, 8, 7, generator=g) > 0.6).float()
    ours = BceDiceLoss()(logits, target)
    assert ours.item() == pytest.approx(official_bce_dice(logits, target).item(), abs=1e-6)
    # weights and a (B, H, W) target
    ours_w = BceDiceLoss(bce_weight=0.3, dice_weight=1.7)(logits, target.squeeze(1))
    ref_w = official_bce_dice(logits, target, wb=0.3, wd=1.7)
    assert ours_w.item() == pytest.approx(ref_w.item(), abs=1e-6)


def test_bce_dice_soft_targets():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 5, 5, generator=g)
    target = torch.rand(2, 1, 5, 5, generator=g)
    expected = official_bce_dice(logits, target).item()
    assert BceDiceLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_bce_dice_extreme_logits_finite_and_exact():
    logits = torch.tensor([[[100.0, -100.0, 100.0, -100.0]]], requires_grad=True)
    target = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
    loss = BceDiceLoss(dice_weight=0.0)(logits, target)
    # two confidently wrong pixels cost 100 each (softplus(100) = 100 + log1p(e^-100)), two right ones ~0
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(50.0, rel=1e-6)
    full = BceDiceLoss()(logits, target)
    full.backward()
    assert torch.isfinite(full) and torch.isfinite(logits.grad).all()
    # beyond what BCELoss-on-sigmoid can represent: its log is clamped at -100
    logits2 = torch.tensor([[[300.0]]], requires_grad=True)
    loss2 = BceDiceLoss(dice_weight=0.0)(logits2, torch.zeros(1, 1, 1))
    assert loss2.item() == pytest.approx(300.0, rel=1e-6)
    loss2.backward()
    assert torch.isfinite(logits2.grad).all()


def test_bce_dice_half_precision_and_errors():
    logits = torch.randn(2, 1, 4, 4).bfloat16()
    out = BceDiceLoss()(logits, torch.ones(2, 1, 4, 4))
    assert out.dtype == torch.float32 and torch.isfinite(out)
    with pytest.raises(ValueError, match="one output channel"):
        BceDiceLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError):
        BceDiceLoss(bce_weight=0, dice_weight=0)
    with pytest.raises(ValueError):
        BceDiceLoss(bce_weight=-1)


# ---------------------------------------------------------------------------------------------
# CeDiceLoss
# ---------------------------------------------------------------------------------------------


def test_ce_dice_hand_computed_uniform_logits():
    # zero logits over C = 2 classes: s = 0.5 everywhere, CE = log 2.
    logits = torch.zeros(1, 2, 1, 4)
    labels = torch.tensor([[[0, 0, 0, 1]]])
    # class 0: inter = 1.5, sum s^2 = 1, sum t^2 = 3 -> 1 - (3 + e)/(4 + e)
    # class 1: inter = 0.5, sum s^2 = 1, sum t^2 = 1 -> 1 - (1 + e)/(2 + e)
    e = 1e-5
    d0 = 1 - (3 + e) / (4 + e)
    d1 = 1 - (1 + e) / (2 + e)
    loss = CeDiceLoss(2)(logits, labels)
    assert loss.item() == pytest.approx(math.log(2) + (d0 + d1) / 2, abs=1e-6)
    no_bg = CeDiceLoss(2, include_background=False)(logits, labels)
    assert no_bg.item() == pytest.approx(math.log(2) + d1, abs=1e-6)


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_ce_dice_matches_reference(seed, include_background):
    g = torch.Generator().manual_seed(seed)
    c = 4
    logits = torch.randn(2, c, 5, 6, generator=g) * 2
    labels = torch.randint(0, c, (2, 5, 6), generator=g)
    ce, dice = reference_ce_dice(logits, labels, c, include_background)
    ours = CeDiceLoss(c, include_background=include_background)(logits, labels)
    assert ours.item() == pytest.approx(ce + dice, abs=1e-6)
    # weights 0.4 / 0.6 (Swin-UNet), float labels with a channel axis (as the Synapse loader gives)
    ours2 = CeDiceLoss(c, ce_weight=0.4, dice_weight=0.6, include_background=include_background)(
        logits, labels.float().unsqueeze(1)
    )
    assert ours2.item() == pytest.approx(0.4 * ce + 0.6 * dice, abs=1e-6)


def test_ce_dice_class_weights():
    g = torch.Generator().manual_seed(5)
    c = 3
    logits = torch.randn(2, c, 4, 4, generator=g)
    labels = torch.randint(0, c, (2, 4, 4), generator=g)
    w = [0.2, 1.0, 3.0]
    ce, dice = reference_ce_dice(logits, labels, c, True, class_weights=w)
    assert CeDiceLoss(c, class_weights=w)(logits, labels).item() == pytest.approx(ce + dice, abs=1e-6)
    with pytest.raises(ValueError, match="class_weights"):
        CeDiceLoss(c, class_weights=[1.0, 1.0])


def test_ce_dice_include_background_changes_value():
    logits = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (1, 4, 4), generator=torch.Generator().manual_seed(1))
    a = CeDiceLoss(3, ce_weight=0.0)(logits, labels)
    b = CeDiceLoss(3, ce_weight=0.0, include_background=False)(logits, labels)
    assert a.item() != pytest.approx(b.item())


def test_ce_dice_validation_errors():
    loss = CeDiceLoss(9)
    logits = torch.zeros(1, 9, 2, 2)
    with pytest.raises(ValueError, match=r"label 9, outside \[0, 9\)"):
        loss(logits, torch.tensor([[[0, 9], [1, 2]]]))
    with pytest.raises(ValueError, match="label -1"):
        loss(logits, torch.tensor([[[0, -1], [1, 2]]]))
    with pytest.raises(ValueError, match="target shape"):
        loss(logits, torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="non-integer"):
        loss(logits, torch.full((1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="num_classes"):
        CeDiceLoss(1)


def test_extreme_logits_gradients_finite():
    logits = (torch.randint(0, 2, (2, 3, 4, 4)).float() * 200 - 100).requires_grad_(True)
    labels = torch.randint(0, 3, (2, 4, 4))
    loss = CeDiceLoss(3)(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    blog = (torch.randint(0, 2, (2, 1, 8, 8)).float() * 200 - 100).requires_grad_(True)
    for fn in (BceDiceLoss(), StructureLoss()):
        blog.grad = None
        out = fn(blog, (torch.rand(2, 1, 8, 8) > 0.5).float())
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(blog.grad).all()


# ---------------------------------------------------------------------------------------------
# StructureLoss (TransFuse / PraNet)
# ---------------------------------------------------------------------------------------------


def test_structure_loss_matches_reference():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 1, 9, 11, generator=g, dtype=torch.float64) * 2
    mask = (torch.rand(2, 1, 9, 11, generator=g) > 0.5).double()
    # boundary weights from a 31x31 box mean with zero padding counted in the divisor
    padded = F.pad(mask, (15, 15, 15, 15))
    box = torch.zeros_like(mask)
    for y in range(9):
        for x in range(11):
            box[..., y, x] = padded[..., y : y + 31, x : x + 31].sum((-1, -2)) / 31**2
    w = 1 + 5 * (box - mask).abs()
    p = 1 / (1 + torch.exp(-logits))
    bce = -(mask * torch.log(p) + (1 - mask) * torch.log(1 - p))
    wbce = (w * bce).sum((2, 3)) / w.sum((2, 3))
    inter = (w * p * mask).sum((2, 3))
    union = (w * (p + mask)).sum((2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    expected = (wbce + wiou).mean()
    assert StructureLoss(weighted_bce=True)(logits, mask).item() == pytest.approx(expected.item(), abs=1e-9)
    # The default is what PraNet's / TransFuse's code computes: its BCE term is the plain mean.
    assert StructureLoss()(logits, mask).item() == pytest.approx((bce.mean() + wiou).mean().item(), abs=1e-9)


def test_structure_loss_default_equals_the_official_expression():
    # The official line, run here as the oracle: `reduce='none'` is the legacy flag (truthy).
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(3, 1, 40, 36, generator=g, dtype=torch.float64) * 3
    mask = (torch.rand(3, 1, 40, 36, generator=g) > 0.6).double()
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the legacy-argument deprecation warning
        wbce = F.binary_cross_entropy_with_logits(pred, mask, reduce="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    prob = torch.sigmoid(pred)
    inter = ((prob * mask) * weit).sum(dim=(2, 3))
    union = ((prob + mask) * weit).sum(dim=(2, 3))
    official = (wbce + 1 - (inter + 1) / (union - inter + 1)).mean()
    assert StructureLoss()(pred, mask).item() == pytest.approx(official.item(), abs=1e-12)
    assert StructureLoss(weighted_bce=True)(pred, mask).item() != pytest.approx(official.item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Deep supervision
# ---------------------------------------------------------------------------------------------


def test_deep_supervision_weighted_sum_and_resizing():
    g = torch.Generator().manual_seed(0)
    base = BceDiceLoss()
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    outs = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(3)]
    ds = DeepSupervisionLoss(base, (0.5, 0.3, 0.2))
    expected = 0.5 * base(outs[0], target) + 0.3 * base(outs[1], target) + 0.2 * base(outs[2], target)
    assert ds(outs, target).item() == pytest.approx(expected.item(), abs=1e-6)
    assert len(ds.last_terms) == 3
    # a smaller output is upsampled bilinearly (align_corners=False) before the base loss
    small = torch.randn(2, 1, 4, 4, generator=g)
    up = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    got = DeepSupervisionLoss(base, (1.0, 1.0))((outs[0], small), target)
    assert got.item() == pytest.approx((base(outs[0], target) + base(up, target)).item(), abs=1e-6)
    # multi-class label map target (B, H, W)
    ce = CeDiceLoss(3)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    outs3 = (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 4, 4, generator=g))
    got3 = DeepSupervisionLoss(ce, (0.6, 0.4))(outs3, labels)
    up3 = F.interpolate(outs3[1], size=(8, 8), mode="bilinear")
    exp3 = 0.6 * ce(outs3[0], labels) + 0.4 * ce(up3, labels)
    assert got3.item() == pytest.approx(exp3.item(), abs=1e-6)


def test_deep_supervision_errors():
    ds = DeepSupervisionLoss(BceDiceLoss(), (0.5, 0.3, 0.2))
    t = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="2 outputs but 3 weights"):
        ds([torch.zeros(1, 1, 4, 4)] * 2, t)
    with pytest.raises(TypeError, match="tuple or list"):
        ds(torch.zeros(1, 1, 4, 4), t)
    with pytest.raises(ValueError, match="larger"):
        DeepSupervisionLoss(BceDiceLoss(), (1.0,))([torch.zeros(1, 1, 8, 8)], t)
    with pytest.raises(ValueError):
        DeepSupervisionLoss(BceDiceLoss(), ())
    with pytest.raises(ValueError):
        DeepSupervisionLoss(BceDiceLoss(), (0.5, -0.1))


def test_transfuse_weights_in_output_order():
    # TransFuse returns (map_x, map_1, map_2) and trains 0.5 L(map_2) + 0.3 L(map_1) + 0.2 L(map_x)
    assert TRANSFUSE_WEIGHTS == (0.2, 0.3, 0.5)
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    map_x, map_1, map_2 = (torch.randn(2, 1, 8, 8, generator=g) for _ in range(3))
    sl = StructureLoss()
    expected = 0.5 * sl(map_2, target) + 0.3 * sl(map_1, target) + 0.2 * sl(map_x, target)
    assert transfuse_loss()((map_x, map_1, map_2), target).item() == pytest.approx(expected.item(), abs=1e-6)
    bd = BceDiceLoss()
    exp_bd = 0.5 * bd(map_2, target) + 0.3 * bd(map_1, target) + 0.2 * bd(map_x, target)
    assert transfuse_loss(bd)([map_x, map_1, map_2], target).item() == pytest.approx(exp_bd.item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# factories
# ---------------------------------------------------------------------------------------------


def test_build_loss_and_defaults():
    assert {"bce_dice", "ce_dice", "bce", "ce", "dice", "structure"} <= set(list_losses())
    assert isinstance(build_loss("bce_dice", 1), BceDiceLoss)
    assert isinstance(build_loss("CE-Dice", 9), CeDiceLoss)
    ce_only = build_loss("ce", 9)
    assert ce_only.dice_weight == 0 and ce_only.ce_weight == 1
    assert build_loss("dice", 1).bce_weight == 0
    assert build_loss("dice", 9).ce_weight == 0
    assert build_loss("ce_dice", 9, include_background=False).include_background is False
    ds = build_loss("bce_dice", 1, deep_supervision=(0.5, 0.5))
    assert isinstance(ds, DeepSupervisionLoss) and ds.weights == (0.5, 0.5)
    with pytest.raises(UnknownNameError, match="known: .*bce_dice.*ce_dice"):
        build_loss("focal", 1)
    with pytest.raises(UnknownNameError, match="did you mean 'bce_dice'"):
        build_loss("bce_dise", 1)
    with pytest.raises(ValueError, match="num_classes=1"):
        build_loss("bce_dice", 9)
    with pytest.raises(ValueError, match=r"'ce_dice' needs class logits \(num_classes >= 2\)"):
        build_loss("ce_dice", 1)
    b = default_loss_for("binary", 1)
    assert isinstance(b, BceDiceLoss) and (b.bce_weight, b.dice_weight, b.smooth) == (1.0, 1.0, 1.0)
    m = default_loss_for("multiclass", 9)
    assert isinstance(m, CeDiceLoss) and m.num_classes == 9 and m.include_background
    assert (m.ce_weight, m.dice_weight, m.smooth) == (1.0, 1.0, 1e-5)
    with pytest.raises(ValueError, match="task"):
        default_loss_for("regression", 1)


# ---------------------------------------------------------------------------------------------
# the registry: each loss declares its task and its loss: keys; the engine passes exactly those
# ---------------------------------------------------------------------------------------------

# Distinct values for every key of the loss: section, so a key passed (or not) shows in the value.
CONFIG_LOSS = {"bce_weight": 0.7, "ce_weight": 0.4, "dice_weight": 1.3, "include_background": False}

# name -> (task, declared keys, num_classes, the loss written out by hand with CONFIG_LOSS's values)
EXPECTED = {
    "bce_dice": ("binary", ("bce_weight", "dice_weight"), 1, lambda: BceDiceLoss(bce_weight=0.7, dice_weight=1.3)),
    "bce": ("binary", ("bce_weight",), 1, lambda: BceDiceLoss(bce_weight=0.7, dice_weight=0.0)),
    "structure": ("binary", (), 1, lambda: StructureLoss()),
    "nnunet_dice_bce": ("binary", ("bce_weight", "dice_weight"), 1,
                        lambda: NnUNetDiceBCELoss(bce_weight=0.7, dice_weight=1.3)),
    "ce_dice": ("multiclass", ("ce_weight", "dice_weight", "include_background"), 4,
                lambda: CeDiceLoss(4, ce_weight=0.4, dice_weight=1.3, include_background=False)),
    "ce": ("multiclass", ("ce_weight",), 4, lambda: CeDiceLoss(4, ce_weight=0.4, dice_weight=0.0)),
    "nnunet_dice_ce": ("multiclass", ("ce_weight", "dice_weight"), 4,
                       lambda: NnUNetDiceCELoss(4, ce_weight=0.4, dice_weight=1.3)),
    # dice takes either task; include_background is not among its keys, so it keeps the default.
    "dice": (None, ("dice_weight",), 4, lambda: CeDiceLoss(4, ce_weight=0.0, dice_weight=1.3)),
}


def _batch(num_classes):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, num_classes, 8, 8, generator=g) * 2
    if num_classes == 1:
        return logits, (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    return logits, torch.randint(0, num_classes, (2, 8, 8), generator=g)


def test_every_loss_declares_its_task_and_config_keys():
    assert set(EXPECTED) == set(list_losses())  # a new loss gets a row here
    for name, (task, keys, _, _) in EXPECTED.items():
        info = loss_info(name)
        assert (info.name, info.task, info.options) == (name, task, keys)
    assert set(LOSS_CONFIG_KEYS) == set(CONFIG_LOSS)  # the table above sets every key of the section


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_engine_passes_exactly_the_declared_keys(name):
    task, _, num_classes, by_hand = EXPECTED[name]
    cfg = ExperimentConfig.from_dict({"loss": {"name": name, **CONFIG_LOSS}})
    built = builders.build_loss(cfg, task or "multiclass", num_classes)
    logits, target = _batch(num_classes)
    assert type(built) is type(by_hand())
    assert built(logits, target).item() == pytest.approx(by_hand()(logits, target).item(), rel=1e-6, abs=1e-7)


def test_dice_on_one_channel_takes_the_binary_dice():
    cfg = ExperimentConfig.from_dict({"loss": {"name": "dice", **CONFIG_LOSS}})
    logits, target = _batch(1)
    expected = BceDiceLoss(bce_weight=0.0, dice_weight=1.3)(logits, target)
    assert builders.build_loss(cfg, "binary", 1)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_unknown_loss_name_is_one_line_with_close_matches():
    cfg = ExperimentConfig.from_dict({"loss": {"name": "bce_dise"}})
    with pytest.raises(UnknownNameError, match=r"^loss\.name: unknown loss 'bce_dise'; did you mean 'bce_dice'") as err:
        builders.build_loss(cfg, "binary", 1)
    assert "\n" not in str(err.value) and "auto" in str(err.value)
    # The registry spells names one way (case, - and _) and reports the name as given.
    assert "CE-Dice" in LOSSES and loss_info("CE-Dice").name == "ce_dice"
    with pytest.raises(UnknownNameError, match="unknown loss 'Bce-Dise'; did you mean 'bce_dice'"):
        loss_info("Bce-Dise")


def test_loss_of_the_other_task_is_a_config_error():
    # ce_dice needs class logits: on a binary dataset it is refused by name, not by CeDiceLoss.
    cfg = ExperimentConfig.from_dict({"loss": {"name": "ce_dice"}})
    with pytest.raises(ConfigError, match=r"^loss\.name: 'ce_dice' is for multiclass outputs .*bce_dice") as err:
        builders.build_loss(cfg, "binary", 1)
    assert "\n" not in str(err.value)


def test_register_loss_refuses_bad_declarations():
    with pytest.raises(ValueError, match="'bce_wieght' not in the loss: configuration section"):
        register_loss("probe_loss", task="binary", options=("bce_wieght",))
    with pytest.raises(TypeError, match="tuple of keys"):
        register_loss("probe_loss", options="bce_weight")
    with pytest.raises(ValueError, match="task must be one of"):
        register_loss("probe_loss", task="regression")
    with pytest.raises(ValueError, match="registered twice"):
        register_loss("BCE-Dice", task="binary")(lambda num_classes, **kw: BceDiceLoss())
    assert "probe_loss" not in LOSSES


# The package's modules, each importing only those before it (vmbench/losses/__init__.py's list).
PACKAGE_ORDER = ("_common", "registry", "binary", "multiclass", "deep_supervision", "nnunet", "build")


def test_loss_modules_import_one_way():
    import ast
    from pathlib import Path

    import vmbench.losses

    folder = Path(vmbench.losses.__file__).parent
    assert {p.stem for p in folder.glob("*.py")} == {"__init__", *PACKAGE_ORDER}
    wrong = []
    for rank, stem in enumerate(PACKAGE_ORDER):
        tree = ast.parse((folder / f"{stem}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vmbench.losses"):
                # the package root would import every module back; a later module closes a circle
                target = node.module.removeprefix("vmbench.losses").lstrip(".")
                if target not in PACKAGE_ORDER[:rank]:
                    wrong.append(f"{stem}.py:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Import) and any(a.name.startswith("vmbench.losses") for a in node.names):
                wrong.append(f"{stem}.py:{node.lineno}: import vmbench.losses...")
    assert not wrong, wrong


# ---------------------------------------------------------------------------------------------
# one optimisation step lowers each loss
# ---------------------------------------------------------------------------------------------


def _step_lowers(loss_fn, out_ch, target, n_heads=1):
    torch.manual_seed(0)
    heads = nn.ModuleList(nn.Conv2d(4, out_ch, 3, padding=1) for _ in range(n_heads))
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    params = list(body.parameters()) + list(heads.parameters())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def run():
        f = body(x)
        outs = [h(f) for h in heads]
        return loss_fn(outs if n_heads > 1 else outs[0], target)

    opt = torch.optim.SGD(params, lr=0.05)
    before = run()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = run()
    assert after.item() < before.item()


@pytest.mark.parametrize("name", ["bce_dice", "bce", "dice", "structure"])
def test_step_lowers_binary_losses(name):
    target = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    _step_lowers(build_loss(name, 1), 1, target)


@pytest.mark.parametrize("name", ["ce_dice", "ce", "dice"])
def test_step_lowers_multiclass_losses(name):
    labels = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(2))
    _step_lowers(build_loss(name, 3), 3, labels)
    _step_lowers(build_loss(name, 3, include_background=False), 3, labels)


def test_step_lowers_deep_supervision():
    target = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    _step_lowers(transfuse_loss(), 1, target, n_heads=3)
    _step_lowers(DeepSupervisionLoss(BceDiceLoss(), (0.5, 0.3, 0.2)), 1, target, n_heads=3)


# ---------------------------------------------------------------------------------------------
# nnU-Net's Dice + CE / Dice + BCE (MIC-DKFZ/nnUNet@0e495086, training/loss/compound_losses.py and
# dice.py): w_ce * CE + w_dice * (-dice), batch Dice, smooth 1e-5, no background in the CE form
# ---------------------------------------------------------------------------------------------


def numpy_nnunet_dice(probs, onehot, batch_dice, smooth=1e-5):
    """Soft Dice score of ``probs``/``onehot`` (B, C, H, W) numpy arrays, mean over channels."""
    import numpy as np

    inter, s_p, s_y = (probs * onehot).sum((2, 3)), probs.sum((2, 3)), onehot.sum((2, 3))
    if batch_dice:
        inter, s_p, s_y = inter.sum(0), s_p.sum(0), s_y.sum(0)
    return float(np.mean((2 * inter + smooth) / np.maximum(s_p + s_y + smooth, 1e-8)))


def test_nnunet_dice_bce_hand_computed_zero_logits():
    # p = 0.5 everywhere, BCE = ln 2; batch sums: I = 0.5 * 3, S_p = 0.5 * 8, S_y = 3.
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    loss = build_loss("nnunet_dice_bce", 1)(torch.zeros(2, 1, 2, 2), target)
    assert loss.item() == pytest.approx(math.log(2) - (3 + 1e-5) / (7 + 1e-5), abs=1e-6)
    # Per-sample Dice: (1 + s) / (3 + s) and (2 + s) / (4 + s), averaged.
    per_sample = build_loss("nnunet_dice_bce", 1, batch_dice=False)(torch.zeros(2, 1, 2, 2), target)
    expected = math.log(2) - ((1 + 1e-5) / (3 + 1e-5) + (2 + 1e-5) / (4 + 1e-5)) / 2
    assert per_sample.item() == pytest.approx(expected, abs=1e-6)


def test_nnunet_dice_ce_hand_computed_uniform_logits():
    # 3 classes, p = 1/3 everywhere, CE = ln 3; classes 1 and 2 only in the Dice.
    labels = torch.tensor([[[0, 1], [2, 2]]])
    loss = build_loss("nnunet_dice_ce", 3)(torch.zeros(1, 3, 2, 2), labels)
    s = 1e-5
    dice = ((2 / 3 + s) / (4 / 3 + 1 + s) + (4 / 3 + s) / (4 / 3 + 2 + s)) / 2
    assert loss.item() == pytest.approx(math.log(3) - dice, abs=1e-6)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_nnunet_dice_bce_matches_numpy(batch_dice):
    import numpy as np

    g = torch.Generator().manual_seed(5)
    logits, target = torch.randn(3, 1, 6, 5, generator=g) * 2, (torch.rand(3, 1, 6, 5, generator=g) > 0.6).float()
    z, y = logits.double().numpy(), target.double().numpy()
    p = 1 / (1 + np.exp(-z))
    bce = float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    expected = 0.7 * bce - 1.3 * numpy_nnunet_dice(p, y, batch_dice)
    loss = build_loss("nnunet_dice_bce", 1, bce_weight=0.7, dice_weight=1.3, batch_dice=batch_dice)
    assert loss(logits, target).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_nnunet_dice_ce_matches_numpy(batch_dice):
    import numpy as np

    g = torch.Generator().manual_seed(6)
    logits, labels = torch.randn(2, 4, 5, 6, generator=g) * 2, torch.randint(0, 4, (2, 5, 6), generator=g)
    z, lab = logits.double().numpy(), labels.numpy()
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    onehot = np.stack([(lab == c) for c in range(4)], 1).astype(np.float64)
    ce = float(np.mean(-np.log((p * onehot).sum(1))))
    expected = 1.0 * ce - 0.5 * numpy_nnunet_dice(p[:, 1:], onehot[:, 1:], batch_dice)
    loss = build_loss("nnunet_dice_ce", 4, dice_weight=0.5, batch_dice=batch_dice)
    assert loss(logits, labels).item() == pytest.approx(expected, abs=1e-5)
    assert loss(logits, labels[:, None]).item() == pytest.approx(expected, abs=1e-5)  # (B, 1, H, W) labels


def test_nnunet_region_loss_on_one_logit_is_the_two_class_loss():
    # softmax([0, z])[1] = sigmoid(z) and CE([0, z], y) = BCE(z, y): one region logit trains as
    # nnU-Net's two softmax outputs with the background left out of the Dice.
    g = torch.Generator().manual_seed(7)
    z, target = torch.randn(2, 1, 8, 8, generator=g), (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    two_class = torch.cat([torch.zeros_like(z), z], 1)
    region = build_loss("nnunet_dice_bce", 1)(z, target)
    softmax_form = build_loss("nnunet_dice_ce", 2)(two_class, target[:, 0].long())
    assert region.item() == pytest.approx(softmax_form.item(), abs=1e-6)


def test_nnunet_losses_refuse_the_other_output_layout():
    with pytest.raises(ValueError, match="nnunet_dice_bce"):
        build_loss("nnunet_dice_ce", 1)
    with pytest.raises(ValueError, match="num_classes=1"):
        build_loss("nnunet_dice_bce", 3)


def test_step_lowers_nnunet_losses():
    target = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    _step_lowers(build_loss("nnunet_dice_bce", 1), 1, target)
    labels = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(2))
    _step_lowers(build_loss("nnunet_dice_ce", 3), 3, labels)
