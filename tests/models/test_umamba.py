"""U-Mamba 2D (``umamba-bot``, ``umamba-enc``) at nnU-Net's 2d plan for 256x256.

Expected numbers come from outside the code under test: parameter counts and state_dict keys and
shapes from the official models built at bowang-lab/U-Mamba@28459e33
(tests/data/keys/umamba_{bot,enc}_2d_keys.txt), block counts and Mamba placements from the
official rules worked out by hand, token layouts from explicit per-pixel loops.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import vmbench
from vmbench.errors import ModelInputError
from vmbench.losses import BceDiceLoss, DownsampledDeepSupervisionLoss
from vmbench.models import nnunet_plan, umamba
from vmbench.search_space import load_spec

ROOT = Path(__file__).resolve().parents[2]


def build_meta(name: str, num_classes: int = 1):
    with torch.device("meta"):
        return vmbench.create_model(name, num_classes=num_classes)


@pytest.fixture(scope="module")
def bot():
    torch.manual_seed(0)
    return vmbench.create_model("umamba-bot", num_classes=1)


# --------------------------------------------------------------------------------------------
# Structure: block counts, parameters, keys, Mamba placement
# --------------------------------------------------------------------------------------------


def test_block_counts_are_umamba_rewrite_of_the_plan():
    plan = nnunet_plan.NNUNET_2D_256
    assert umamba.umamba_block_counts(plan) == ((2, 2, 2, 2, 1, 1, 1), (2, 2, 2, 2, 1, 1))
    assert plan.n_conv_per_stage == (2,) * 7  # the plan itself is not rewritten
    model = build_meta("umamba-bot")
    assert len(model.encoder.stem) == 2
    assert [len(stage) for stage in model.encoder.stages] == [2, 2, 2, 2, 1, 1, 1]
    assert [len(stage) for stage in model.decoder.stages] == [2, 2, 2, 2, 1, 1]


@pytest.mark.parametrize(
    "name,num_classes,expected",
    [
        ("umamba-bot", 1, 47_514_022),
        ("umamba-bot", 2, 47_515_532),
        ("umamba-bot", 9, 47_526_102),
        ("umamba-enc", 1, 46_386_662),
        ("umamba-enc", 2, 46_388_172),
        ("umamba-enc", 9, 46_398_742),
    ],
)
def test_parameter_counts(name, num_classes, expected):
    assert sum(p.numel() for p in build_meta(name, num_classes).parameters()) == expected


@pytest.mark.parametrize("name,keys", [("umamba-bot", "umamba_bot_2d_keys.txt"), ("umamba-enc", "umamba_enc_2d_keys.txt")])
def test_keys_and_shapes_match_official(name, keys, official_keys):
    got = [(k, tuple(v.shape)) for k, v in build_meta(name).state_dict().items()]
    assert got == official_keys(keys)


def test_enc_mamba_layers_after_stages_0_2_4_6():
    layers = build_meta("umamba-enc").encoder.mamba_layers
    kinds = [(m.dim, m.channel_token) if isinstance(m, umamba.MambaLayer) else None for m in layers]
    # 256x256 input: maps 256, 128, 64, 32, 16, 8, 4 per side against 32..512 channels; a stage
    # whose pixels do not outnumber its channels (16*16 <= 512, 4*4 <= 512) uses channel tokens.
    assert kinds == [(32, False), None, (128, False), None, (256, True), None, (16, True)]


def test_registered_with_nnunet_trainer_recipe():
    for name in ("umamba-bot", "umamba-enc"):
        info = vmbench.model_info(name)
        assert info.family == "umamba" and info.published == () and info.input_size == (256, 256)
        assert info.recipe["batch_size"] == 49
        assert info.recipe["optimizer"]["nesterov"] is True and info.recipe["epochs"] == 1000


@pytest.mark.parametrize("space,models,batch", [
    ("umamba.yaml", ["umamba-bot", "umamba-enc"], 49),
    ("nnunet.yaml", ["nnunet"], 49),
    ("resenc_unet_m.yaml", ["resenc-unet-m"], 50),
])
def test_search_spaces_start_from_the_nnunet_recipe(space, models, batch):
    spec = load_spec(ROOT / "search_spaces" / space)
    assert [study.model for study in spec.studies] == models
    for study in spec.studies:
        cfg = study.base
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 1e-2, 0.99, 3e-5)
        assert (cfg.scheduler.name, cfg.scheduler.power) == ("poly", 0.9)
        assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_clip, cfg.train.amp) == (1000, batch, 12.0, "fp16")
        assert cfg.data.img_size == 256
        assert study.start_point["train.batch_size"] == batch and study.start_point["optim.lr"] == 1e-2


# --------------------------------------------------------------------------------------------
# Initialisation and the Mamba layer
# --------------------------------------------------------------------------------------------


def test_he_init_covers_the_2d_convs_and_spares_mamba(bot):
    convs = [m for m in bot.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    weight = bot.encoder.stages[4][0].conv1.weight  # 256 -> 512, 3x3: fan_in 2304
    assert abs(weight.std().item() / math.sqrt(2.0 / (1 + 0.01**2) / 2304) - 1) < 0.02
    mamba = bot.mamba_layer.mamba
    assert torch.count_nonzero(mamba.conv1d.bias) == mamba.conv1d.bias.numel()  # PyTorch's own init
    dt = torch.nn.functional.softplus(mamba.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert torch.allclose(mamba.A_log, torch.log(torch.arange(1.0, 17.0)).expand(1024, 16))


def _loop_tokens(x: torch.Tensor, channel_token: bool) -> torch.Tensor:
    """(B, C, H, W) -> token sequence, written pixel by pixel in row-major order."""
    b, c, h, w = x.shape
    if channel_token:  # C tokens, each the H*W pixels of one channel
        return torch.stack([torch.stack([x[:, k, i, j] for i in range(h) for j in range(w)], -1) for k in range(c)], 1)
    return torch.stack([x[:, :, i, j] for i in range(h) for j in range(w)], 1)  # H*W tokens of C


@pytest.mark.parametrize("channel_token", [False, True])
def test_mamba_layer_token_layout(channel_token):
    torch.manual_seed(0)
    b, c, h, w = 2, 6, 3, 4
    layer = umamba.MambaLayer(h * w if channel_token else c, channel_token=channel_token).double()
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    out = layer(x)
    seq = layer.mamba(layer.norm(_loop_tokens(x, channel_token)))
    for i in range(h):
        for j in range(w):
            expected = seq[:, :, i * w + j] if channel_token else seq[:, i * w + j, :]
            torch.testing.assert_close(out[:, :, i, j], expected)


def test_mamba_layer_runs_half_inputs_in_fp32():
    torch.manual_seed(0)
    layer = umamba.MambaLayer(8)
    assert layer(torch.randn(1, 8, 2, 2, dtype=torch.float16)).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Forward, errors, training
# --------------------------------------------------------------------------------------------


# The same classes at a narrow plan (widths 4-8, a 128x128 patch): cheap enough to run every path
# on 2 cores. UMambaEnc built for it has patch tokens at stages 0, 2, 4 and channel tokens
# (2x2 = 4 <= 8 channels) at stage 6.
NARROW = dataclasses.replace(
    nnunet_plan.NNUNET_2D_256, patch_size=(128, 128), features_per_stage=(4, 8, 8, 8, 8, 8, 8)
)


@torch.no_grad()
def test_bot_deep_supervision_outputs_at_128(bot):
    outputs = bot.train()(torch.randn(1, 1, 128, 128))  # a grey image is repeated to 3 channels
    assert [tuple(o.shape) for o in outputs] == [(1, 1, 128 >> i, 128 >> i) for i in range(6)]
    assert list(bot.deep_supervision_weights) == pytest.approx([16 / 31, 8 / 31, 4 / 31, 2 / 31, 1 / 31, 0.0])
    assert bot.deep_supervision_targets == "downsample"


@torch.no_grad()
def test_deep_supervision_switch_and_eval_output():
    torch.manual_seed(0)
    model = umamba.UMambaBot(num_classes=3, plan=NARROW).train()  # UMambaEnc shares decoder and outputs
    x = torch.randn(1, 3, 128, 128)
    assert [tuple(o.shape) for o in model(x)] == [(1, 3, 128 >> i, 128 >> i) for i in range(6)]
    model.set_deep_supervision_enabled(False)
    assert model(x).shape == (1, 3, 128, 128)
    model.set_deep_supervision_enabled(True)
    assert model.eval()(x).shape == (1, 3, 128, 128)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 3, 160, 256), (1, 2, 256, 256)])
def test_bot_bad_inputs(bot, shape):
    with pytest.raises(ModelInputError, match="umamba-bot"):
        bot(torch.randn(*shape))


def test_enc_takes_exactly_256():
    with pytest.raises(ModelInputError, match=r"256x256.*img_size \(128, 128\)"):
        vmbench.create_model("umamba-enc", img_size=(128, 128))
    with torch.device("meta"):
        model = vmbench.create_model("umamba-enc", img_size=(256, 256))
    for size in (128, 320, 64):
        with pytest.raises(ModelInputError, match=rf"umamba-enc is built for its 256x256 patch only.*got {size}x{size}"):
            model(torch.randn(1, 3, size, size))


def _one_gradient_step(model: torch.nn.Module, size: int) -> tuple[list[torch.Size], float, float]:
    """Output shapes, then the loss before and after one gradient step (clipped at 12 as nnU-Net)."""
    torch.manual_seed(1)
    images = torch.randn(1, 3, size, size)
    masks = (torch.rand(1, 1, size, size) > 0.5).float()
    loss_fn = DownsampledDeepSupervisionLoss(BceDiceLoss(), model.deep_supervision_weights)
    # A plain gradient step small enough to descend on one image: nnU-Net's lr 1e-2 with Nesterov
    # momentum 0.99 moves about twice as far on its first step and relies on the plan's batch.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    outputs = model(images)
    before = loss_fn(outputs, masks)
    optimizer.zero_grad()
    before.backward()
    mambas = [m for m in model.modules() if isinstance(m, umamba.MambaLayer)]
    assert mambas and all(m.mamba.A_log.grad is not None for m in mambas)  # the gradient reaches every Mamba
    torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
    optimizer.step()
    with torch.no_grad():
        after = loss_fn(model(images), masks)
    return [o.shape for o in outputs], before.item(), after.item()


@pytest.mark.parametrize("cls", [umamba.UMambaBot, umamba.UMambaEnc])
def test_narrow_models_gradient_step_lowers_the_loss(cls):
    torch.manual_seed(0)
    model = cls(num_classes=1, plan=NARROW)
    shapes, before, after = _one_gradient_step(model, 128)
    assert shapes == [(1, 1, 128 >> i, 128 >> i) for i in range(6)]
    assert after < before


@pytest.mark.slow
def test_real_size_training_and_256():
    torch.manual_seed(0)
    bot = vmbench.create_model("umamba-bot", num_classes=1)
    _, before, after = _one_gradient_step(bot, 128)
    assert after < before
    with torch.no_grad():
        assert bot.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 1, 256, 256)
    enc = vmbench.create_model("umamba-enc", num_classes=1)
    shapes, before, after = _one_gradient_step(enc, 256)
    assert shapes == [(1, 1, 256 >> i, 256 >> i) for i in range(6)]
    assert after < before
    with torch.no_grad():
        assert enc.eval()(torch.randn(1, 3, 256, 256)).shape == (1, 1, 256, 256)
