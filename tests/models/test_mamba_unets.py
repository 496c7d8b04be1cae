"""UltraLight VM-UNet and LightM-UNet: sizes, keys, forward rules, input errors, one training step.

Expected parameter counts are those of the official models built on CPU
(wurenkai/UltraLight-VM-UNet@d7648e4e, MrBlankness/LightM-UNet@6b72e27b); the keys and shapes are
read from tests/data/keys/, written from the same official builds.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import vmbench
from vmbench.errors import ModelInputError
from vmbench.models.lightm_unet import LightMUNet, MambaLayer
from vmbench.models.ultralight_vmunet import PVMLayer, UltraLightVMUNet

OFFICIAL_PARAMS = {
    "ultralight-vmunet": {1: 49_457, 2: 49_466, 9: 49_529},
    "lightm-unet": {1: 5_011_732, 2: 5_011_765, 9: 5_011_996},
}
KEY_FILES = {"ultralight-vmunet": "ultralight_vmunet_keys.txt", "lightm-unet": "lightm_unet_2d_keys.txt"}


def build_meta(name: str, num_classes: int = 1, **overrides):
    with torch.device("meta"):
        return vmbench.create_model(name, num_classes=num_classes, **overrides)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
@pytest.mark.parametrize("num_classes", [1, 2, 9])
def test_parameter_count_matches_the_official_model(name, num_classes):
    model = build_meta(name, num_classes)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name][num_classes]


@pytest.mark.parametrize("name", sorted(KEY_FILES))
def test_state_dict_keys_shapes_and_order_match_the_official_model(name, official_keys):
    expected = official_keys(KEY_FILES[name])
    got = [(k, tuple(v.shape)) for k, v in build_meta(name).state_dict().items()]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert got == expected  # the same order, too


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("ultralight-vmunet", [(256, 256), (64, 96)]),
        ("lightm-unet", [(32, 40)]),
        pytest.param("lightm-unet", [(256, 256)], marks=pytest.mark.slow),  # 65,536 tokens per Mamba at full size
    ],
)
def test_output_is_logits_at_the_input_size(name, sizes):
    torch.manual_seed(0)
    model = vmbench.create_model(name, num_classes=2).eval()
    for h, w in sizes:
        with torch.no_grad():
            out = model(torch.randn(1, 3, h, w))
        assert out.shape == (1, 2, h, w)
        assert torch.isfinite(out).all()
        assert out.min() < 0 or out.max() > 1  # not squashed into (0, 1) by a sigmoid


@pytest.mark.parametrize("name, bad, multiple", [("ultralight-vmunet", (100, 64), 32), ("lightm-unet", (36, 32), 8)])
def test_bad_input_size_is_one_clear_line(name, bad, multiple):
    model = vmbench.create_model(name)
    with pytest.raises(ModelInputError, match=rf"divisible by {multiple}.*got {bad[0]}x{bad[1]}") as err:
        model(torch.randn(1, 3, *bad))
    assert "\n" not in str(err.value) and "nearest" in str(err.value)
    with pytest.raises(ModelInputError, match="3 input channels"):
        model(torch.randn(1, 1, multiple, multiple))
    with pytest.raises(ModelInputError, match="tensor"):
        model(torch.randn(3, multiple, multiple))


@pytest.mark.parametrize("name, size", [("ultralight-vmunet", 64), ("lightm-unet", 16)])
def test_one_optimiser_step_lowers_the_loss_on_a_fixed_batch(name, size):
    torch.manual_seed(0)
    model = vmbench.create_model(name)
    x = torch.randn(2, 3, size, size)
    target = (torch.arange(size)[None, :] > size // 2).float().expand(2, 1, size, size)  # half-plane masks
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        loss.backward()
        losses.append(loss.item())
        optimiser.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert losses[1] < losses[0]


# ----------------------------------------------------------------------------- UltraLight VM-UNet


def test_ultralight_init_reinitialises_mamba_dt_proj_as_the_official():
    torch.manual_seed(0)
    model = UltraLightVMUNet()
    pvms = [m for m in model.modules() if isinstance(m, PVMLayer)]
    assert len(pvms) == 6
    for pvm in pvms:
        dt = pvm.mamba.dt_proj
        # trunc_normal(std 0.02) and a zero bias, not Mamba's uniform(+-dt_rank**-0.5) and softplus^-1(dt)
        assert torch.equal(dt.bias, torch.zeros_like(dt.bias))
        assert dt.weight.abs().max() < 0.1
        assert torch.equal(pvm.proj.bias, torch.zeros_like(pvm.proj.bias))
    pooled = torch.cat([w.flatten() for p in pvms for w in (p.mamba.in_proj.weight, p.mamba.x_proj.weight)])
    assert 0.015 < pooled.std().item() < 0.025  # every Linear: trunc_normal(std 0.02)
    assert torch.equal(model.encoder1[0].bias, torch.zeros(8))  # Conv2d bias zeroed

    kept = UltraLightVMUNet(official_init=False)
    for pvm in (m for m in kept.modules() if isinstance(m, PVMLayer)):
        dt = F.softplus(pvm.mamba.dt_proj.bias)
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)  # Mamba's own dt init kept
        assert pvm.mamba.dt_proj.weight.abs().max() <= pvm.mamba.dt_rank**-0.5


def test_pvm_layer_shares_one_mamba_over_four_chunks():
    torch.manual_seed(1)
    layer = PVMLayer(24, 32).double()
    with torch.no_grad():
        layer.skip_scale.fill_(0.7)
    x = torch.randn(2, 24, 4, 4, dtype=torch.float64)
    # The official formula: four calls of the same Mamba, skip from the normalised chunk.
    tokens = layer.norm(x.reshape(2, 24, 16).transpose(1, 2))
    parts = [layer.mamba(c) + layer.skip_scale * c for c in tokens.chunk(4, dim=2)]
    expected = layer.proj(layer.norm(torch.cat(parts, dim=2))).transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert sum(1 for m in layer.modules() if m.__class__.__name__ == "Mamba") == 1


def test_ultralight_without_bridge_and_with_conv_attention():
    for kwargs in ({"bridge": False}, {"split_att": "conv"}):
        model = UltraLightVMUNet(**kwargs)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    assert not hasattr(UltraLightVMUNet(bridge=False), "scab")


# ----------------------------------------------------------------------------- LightM-UNet


def test_lightm_mamba_layer_skips_from_the_raw_tokens():
    torch.manual_seed(2)
    layer = MambaLayer(8, 16).double()
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    tokens = x.reshape(2, 8, 15).transpose(1, 2)
    expected = layer.proj(layer.norm(layer.mamba(layer.norm(tokens)) + layer.skip_scale * tokens))
    torch.testing.assert_close(layer(x), expected.transpose(1, 2).reshape(2, 16, 3, 5), rtol=1e-12, atol=1e-12)


def test_lightm_encoder_widths_and_3d():
    model = LightMUNet()
    assert model.size_multiple == 8
    assert [m.mamba.d_model for m in model.modules() if isinstance(m, MambaLayer)][:3] == [32, 32, 32]
    small = LightMUNet(spatial_dims=3, init_filters=8, blocks_down=(1, 1), blocks_up=(1,), num_classes=2)
    assert small(torch.randn(1, 3, 4, 6, 2)).shape == (1, 2, 4, 6, 2)
