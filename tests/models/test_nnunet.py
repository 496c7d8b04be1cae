"""nnU-Net's CNN baselines (``nnunet``, ``resenc-unet-m``) and nnU-Net's deep-supervision loss.

Expected numbers come from outside the code under test: ResEnc M's parameter counts and its
state_dict keys and shapes from the official model built with nnU-Net 2.8.1
(tests/data/keys/resenc_m_2d_keys.txt), the plain U-Net's count from the plan's layer sizes summed
by hand below, the deep-supervision weights from nnU-Net's formula worked out by hand, and the
downsampled targets from array slicing.
"""

from __future__ import annotations

import math

import pytest
import torch

import vmbench
from vmbench.errors import ModelInputError
from vmbench.losses import BceDiceLoss, CeDiceLoss, DownsampledDeepSupervisionLoss, downsample_target
from vmbench.models import nnunet_plan


# nnU-Net's default 2d plan for 256x256 images (nnUNetPlans.json written by nnU-Net 2.8.1).
FEATURES = [32, 64, 128, 256, 512, 512, 512]
# nnUNetTrainer._build_loss for 6 outputs: 1, 1/2, 1/4, 1/8, 1/16 and 0, divided by their sum 31/16.
NNUNET_DS_WEIGHTS = [16 / 31, 8 / 31, 4 / 31, 2 / 31, 1 / 31, 0.0]


def build_meta(name: str, num_classes: int = 1, **overrides):
    with torch.device("meta"):
        return vmbench.create_model(name, num_classes=num_classes, **overrides)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts shared tensors once


def plain_unet_params(in_chans: int, num_classes: int) -> int:
    """PlainConvUNet at the plan, by hand: 3x3 conv + bias, InstanceNorm affine, 2x2 transposed conv."""

    def conv_norm(cin: int, cout: int) -> int:
        return 9 * cin * cout + cout + 2 * cout

    total, cin = 0, in_chans
    for c in FEATURES:  # encoder: 2 convs per stage
        total += conv_norm(cin, c) + conv_norm(c, c)
        cin = c
    for below, skip in zip(FEATURES[:0:-1], FEATURES[-2::-1]):  # decoder, bottom-up
        total += 4 * below * skip + skip  # transposed conv, bias on
        total += conv_norm(2 * skip, skip) + conv_norm(skip, skip)
        total += skip * num_classes + num_classes  # 1x1 deep-supervision head (always built)
    return total


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(0)
    return vmbench.create_model("nnunet", num_classes=1)


@pytest.fixture(scope="module")
def resenc():
    torch.manual_seed(0)
    return vmbench.create_model("resenc-unet-m", num_classes=1)


# --------------------------------------------------------------------------------------------
# Plan, parameters, keys
# --------------------------------------------------------------------------------------------


def test_plan_holds_nnunet_default_2d_plan_for_256():
    for plan in (nnunet_plan.NNUNET_2D_256, nnunet_plan.RESENC_M_2D_256):
        assert plan.patch_size == (256, 256)
        assert list(plan.features_per_stage) == FEATURES
        assert plan.kernel_sizes == ((3, 3),) * 7
        assert plan.strides == ((1, 1),) + ((2, 2),) * 6
        assert plan.conv_bias and plan.norm_eps == 1e-5 and plan.he_neg_slope == 1e-2
        assert plan.divisor == (64, 64) and plan.min_size == (128, 128)
    assert nnunet_plan.NNUNET_2D_256.n_conv_per_stage == (2,) * 7
    assert nnunet_plan.NNUNET_2D_256.n_conv_per_stage_decoder == (2,) * 6
    assert nnunet_plan.RESENC_M_2D_256.n_conv_per_stage == (1, 3, 4, 6, 6, 6, 6)
    assert nnunet_plan.RESENC_M_2D_256.n_conv_per_stage_decoder == (1,) * 6


@pytest.mark.parametrize("num_classes", [1, 2, 9])
def test_plain_parameter_count_matches_the_plan_by_hand(num_classes):
    assert n_params(build_meta("nnunet", num_classes)) == plain_unet_params(3, num_classes)


@pytest.mark.parametrize("num_classes,expected", [(1, 105_915_878), (2, 105_917_388), (9, 105_927_958)])
def test_resenc_m_parameter_counts(num_classes, expected):
    assert n_params(build_meta("resenc-unet-m", num_classes)) == expected


def test_resenc_m_keys_and_shapes_match_official(official_keys):
    model = build_meta("resenc-unet-m", 1)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == official_keys("resenc_m_2d_keys.txt")


def test_plain_keys_follow_dynamic_network_architectures():
    keys = build_meta("nnunet", 1).state_dict()
    assert tuple(keys["encoder.stages.0.0.convs.0.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(keys["encoder.stages.6.0.convs.1.conv.weight"].shape) == (512, 512, 3, 3)
    assert tuple(keys["decoder.transpconvs.0.weight"].shape) == (512, 512, 2, 2)
    assert tuple(keys["decoder.stages.5.convs.0.conv.weight"].shape) == (32, 64, 3, 3)
    heads = [tuple(keys[f"decoder.seg_layers.{i}.weight"].shape) for i in range(6)]
    assert heads == [(1, c, 1, 1) for c in (512, 512, 256, 128, 64, 32)]
    # deep-supervision heads are in the state dict with deep supervision off too
    assert list(build_meta("nnunet", 1, deep_supervision=False).state_dict()) == list(keys)


def test_registered_with_the_trainer_recipe():
    names = vmbench.list_models()
    assert "nnunet" in names and "resenc-unet-m" in names
    plain_recipe = vmbench.model_info("nnunet").recipe
    assert plain_recipe["batch_size"] == 49 and vmbench.model_info("resenc-unet-m").recipe["batch_size"] == 50
    assert plain_recipe["optimizer"] == {
        "name": "SGD", "lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5,
    }
    assert plain_recipe["epochs"] == 1000 and plain_recipe["iterations_per_epoch"] == 250
    assert vmbench.model_info("nnunet").published == ()


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------


def test_resenc_m_last_norm_of_every_residual_block_starts_at_zero(resenc):
    blocks = [m for name, m in resenc.named_modules() if type(m).__name__ == "BasicBlockD" and "decoder" not in name]
    assert len(blocks) == 1 + 3 + 4 + 6 + 6 + 6 + 6
    for block in blocks:
        assert torch.count_nonzero(block.conv2.norm.weight) == 0
        assert torch.count_nonzero(block.conv2.norm.bias) == 0
        assert torch.count_nonzero(block.conv1.norm.weight - 1) == 0  # other norms keep PyTorch's init


def test_he_initialisation(plain):
    convs = [m for m in plain.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    weight = plain.encoder.stages[3][0].convs[1].conv.weight  # 256 -> 256, fan_in 2304
    expected_std = math.sqrt(2.0 / (1 + 0.01**2) / (256 * 9))
    assert abs(weight.std().item() / expected_std - 1) < 0.02


# --------------------------------------------------------------------------------------------
# Forward: shapes, deep supervision, input errors
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def test_plain_eval_returns_full_resolution_logits_at_256(plain):
    plain.eval()
    assert plain(torch.randn(1, 3, 256, 256)).shape == (1, 1, 256, 256)


@torch.no_grad()
@pytest.mark.parametrize("fixture", ["plain", "resenc"])
def test_deep_supervision_outputs_in_train_mode(fixture, request):
    model = request.getfixturevalue(fixture).train()
    outputs = model(torch.randn(1, 1, 128, 128))  # a grey image is repeated to 3 channels
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == [(1, 1, 128 >> i, 128 >> i) for i in range(6)]
    assert list(model.deep_supervision_weights) == pytest.approx(NNUNET_DS_WEIGHTS, abs=1e-12)
    assert model.deep_supervision_targets == "downsample"


@torch.no_grad()
def test_deep_supervision_off_returns_one_tensor_in_train_mode(plain):
    plain.train().set_deep_supervision_enabled(False)
    try:
        assert plain(torch.randn(1, 3, 128, 128)).shape == (1, 1, 128, 128)
    finally:
        plain.set_deep_supervision_enabled(True)
    with pytest.raises(ValueError, match="true or false"):
        plain.set_deep_supervision_enabled("yes")


@pytest.mark.parametrize("fixture", ["plain", "resenc"])
@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 3, 200, 256), (1, 3, 256, 96), (1, 4, 256, 256), (3, 256, 256)])
def test_bad_inputs_are_one_line_model_input_errors(fixture, shape, request):
    model = request.getfixturevalue(fixture)
    with pytest.raises(ModelInputError) as info:
        model(torch.randn(*shape))
    message = str(info.value)
    assert "\n" not in message and model.model_name in message


def test_64_names_the_size_and_the_fix(plain):
    with pytest.raises(ModelInputError, match=r"multiples of 64 and at least 128.*got 64x64.*img.size"):
        plain(torch.randn(2, 3, 64, 64))


# --------------------------------------------------------------------------------------------
# Deep-supervision loss against downsampled targets
# --------------------------------------------------------------------------------------------


def test_nnunet_deep_supervision_weights_by_hand():
    assert list(nnunet_plan.deep_supervision_weights(6)) == pytest.approx(NNUNET_DS_WEIGHTS, abs=1e-12)
    assert list(nnunet_plan.deep_supervision_weights(3)) == pytest.approx([2 / 3, 1 / 3, 0.0], abs=1e-12)


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_downsample_target_is_nearest_exact(factor):
    labels = torch.randint(0, 9, (2, 64, 64))
    small = downsample_target(labels, (64 // factor, 64 // factor))
    # nearest-exact takes source pixel floor((i + 0.5) * factor) = factor * i + factor / 2
    assert small.dtype == torch.int64
    assert torch.equal(small, labels[:, factor // 2 :: factor, factor // 2 :: factor])
    mask = (torch.rand(2, 1, 64, 64) > 0.5).float()
    assert torch.equal(downsample_target(mask, (64 // factor,) * 2), mask[..., factor // 2 :: factor, factor // 2 :: factor])


def test_downsampled_loss_is_the_weighted_sum_over_sliced_targets():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    outputs = [torch.randn(2, 1, 32 >> i, 32 >> i) for i in range(4)]
    outputs[-1] = torch.full_like(outputs[-1], float("nan"))  # weight 0: never computed
    weights = [4 / 7, 2 / 7, 1 / 7, 0.0]  # 1, 1/2, 1/4, 0 over 7/4
    base = BceDiceLoss()
    loss = DownsampledDeepSupervisionLoss(base, nnunet_plan.deep_supervision_weights(4))(outputs, target)
    expected = sum(
        w * base(o, target[..., (1 << i) // 2 :: 1 << i, (1 << i) // 2 :: 1 << i] if i else target)
        for i, (w, o) in enumerate(zip(weights[:3], outputs[:3]))
    )
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_downsampled_loss_with_multiclass_labels():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 16, 16))
    outputs = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)]
    base = CeDiceLoss(3)
    loss = DownsampledDeepSupervisionLoss(base, (0.75, 0.25))(outputs, target)
    expected = 0.75 * base(outputs[0], target) + 0.25 * base(outputs[1], target[:, 1::2, 1::2])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_downsampled_loss_errors():
    loss = DownsampledDeepSupervisionLoss(BceDiceLoss(), (0.5, 0.5))
    with pytest.raises(ValueError, match="2 weights"):
        loss([torch.randn(1, 1, 8, 8)], torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="larger than the target"):
        loss([torch.randn(1, 1, 8, 8), torch.randn(1, 1, 16, 16)], torch.zeros(1, 1, 8, 8))
    with pytest.raises(TypeError):
        loss(torch.randn(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="all 0"):
        DownsampledDeepSupervisionLoss(BceDiceLoss(), (0.0, 0.0))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _one_gradient_step(model: torch.nn.Module, size: int) -> tuple[float, float]:
    """Loss before and after one gradient step (clipped at 12 as nnU-Net) on a fixed image."""
    torch.manual_seed(1)
    images = torch.randn(1, 3, size, size)
    masks = (torch.rand(1, 1, size, size) > 0.5).float()
    loss_fn = DownsampledDeepSupervisionLoss(BceDiceLoss(), model.deep_supervision_weights)
    # A plain gradient step small enough to descend on one image: nnU-Net's lr 1e-2 with Nesterov
    # momentum 0.99 moves about twice as far on its first step and relies on the plan's batch.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    before = loss_fn(model(images), masks)
    optimizer.zero_grad()
    before.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 12)  # nnU-Net's train_step
    optimizer.step()
    with torch.no_grad():
        after = loss_fn(model(images), masks)
    return before.item(), after.item()


def test_plain_one_gradient_step_lowers_the_loss():
    torch.manual_seed(0)
    before, after = _one_gradient_step(vmbench.create_model("nnunet", num_classes=1), 128)
    assert after < before


@pytest.mark.slow
def test_resenc_m_one_gradient_step_lowers_the_loss():
    torch.manual_seed(0)
    before, after = _one_gradient_step(vmbench.create_model("resenc-unet-m", num_classes=1), 128)
    assert after < before
