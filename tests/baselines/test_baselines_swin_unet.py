"""Conformance tests for Swin-UNet (baselines/swin_unet.py) against the official code.

Expected values (parameter counts, key names and shapes, window index and mask, loader counts)
are written here from HuCaoFighting/Swin-Unet@0644419 (networks/swin_transformer_unet_skip_expand_
decoder_sys.py, networks/vision_transformer.py, configs/swin_tiny_patch4_window7_224_lite.yaml;
counts from instantiating that code on CPU) and the reference structure rules, never read back
from the model. Everything runs on CPU in a few seconds.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import baselines.swin_unet  # noqa: F401  (registers "swin-unet")
from baselines.swin_unet import (
    CheckpointFormatError,
    SwinTransformerBlock,
    SwinTransformerSys,
    SwinUnet,
    WindowAttention,
    load_swin_pretrained,
    load_swin_unet_checkpoint,
    stage_geometry,
)
from vmbench.registry import create_model, model_info

ROOT = Path(__file__).resolve().parents[2]

# Published lite configuration (configs/swin_tiny_patch4_window7_224_lite.yaml).
DIMS = [96, 192, 384, 768]
RES = [56, 28, 14, 7]  # token grid per stage at 224x224
HEADS = [3, 6, 12, 24]
LITE_DEPTHS = [2, 2, 2, 2]
SWIN_T_DEPTHS = [2, 2, 6, 2]
WIN = 7
PARAMS_NC9 = 27_168_900
PARAMS_NC1 = 27_168_132


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def model9() -> SwinUnet:
    torch.manual_seed(0)
    return create_model("swin-unet", num_classes=9).eval()


# --------------------------------------------------------------------------------------------
# Expected state dict, written from the reference structure rules.
# --------------------------------------------------------------------------------------------


def swin_block_entries(prefix: str, c: int, res: int, heads: int, shifted: bool) -> list[tuple[str, tuple]]:
    """One official SwinTransformerBlock: own buffer attn_mask first, then children in order."""
    out = []
    if shifted and res > WIN:  # a 7x7 grid gets one window and no shift, so no mask
        out.append((f"{prefix}.attn_mask", ((res // WIN) ** 2, WIN * WIN, WIN * WIN)))
    out += [
        (f"{prefix}.norm1.weight", (c,)),
        (f"{prefix}.norm1.bias", (c,)),
        (f"{prefix}.attn.relative_position_bias_table", ((2 * WIN - 1) ** 2, heads)),
        (f"{prefix}.attn.relative_position_index", (WIN * WIN, WIN * WIN)),
        (f"{prefix}.attn.qkv.weight", (3 * c, c)),
        (f"{prefix}.attn.qkv.bias", (3 * c,)),
        (f"{prefix}.attn.proj.weight", (c, c)),
        (f"{prefix}.attn.proj.bias", (c,)),
        (f"{prefix}.norm2.weight", (c,)),
        (f"{prefix}.norm2.bias", (c,)),
        (f"{prefix}.mlp.fc1.weight", (4 * c, c)),
        (f"{prefix}.mlp.fc1.bias", (4 * c,)),
        (f"{prefix}.mlp.fc2.weight", (c, 4 * c)),
        (f"{prefix}.mlp.fc2.bias", (c,)),
    ]
    return out


def expected_swin_unet_entries(num_classes: int) -> list[tuple[str, tuple]]:
    """SwinTransformerSys entries (no prefix) in official registration order."""
    e = [
        ("patch_embed.proj.weight", (96, 3, 4, 4)),
        ("patch_embed.proj.bias", (96,)),
        ("patch_embed.norm.weight", (96,)),
        ("patch_embed.norm.bias", (96,)),
    ]
    for i in range(4):
        c = DIMS[i]
        for j in range(LITE_DEPTHS[i]):
            e += swin_block_entries(f"layers.{i}.blocks.{j}", c, RES[i], HEADS[i], shifted=j % 2 == 1)
        if i < 3:  # PatchMerging: reduction registered before norm
            e += [
                (f"layers.{i}.downsample.reduction.weight", (2 * c, 4 * c)),
                (f"layers.{i}.downsample.norm.weight", (4 * c,)),
                (f"layers.{i}.downsample.norm.bias", (4 * c,)),
            ]
    e += [("layers_up.0.expand.weight", (1536, 768)), ("layers_up.0.norm.weight", (384,)), ("layers_up.0.norm.bias", (384,))]
    for j in (1, 2, 3):
        s = 3 - j
        c = DIMS[s]
        for b in range(LITE_DEPTHS[s]):
            e += swin_block_entries(f"layers_up.{j}.blocks.{b}", c, RES[s], HEADS[s], shifted=b % 2 == 1)
        if j < 3:
            e += [
                (f"layers_up.{j}.upsample.expand.weight", (2 * c, c)),
                (f"layers_up.{j}.upsample.norm.weight", (c // 2,)),
                (f"layers_up.{j}.upsample.norm.bias", (c // 2,)),
            ]
    for j in (1, 2, 3):
        c = DIMS[3 - j]
        e += [(f"concat_back_dim.{j}.weight", (c, 2 * c)), (f"concat_back_dim.{j}.bias", (c,))]
    e += [
        ("norm.weight", (768,)),
        ("norm.bias", (768,)),
        ("norm_up.weight", (96,)),
        ("norm_up.bias", (96,)),
        ("up.expand.weight", (16 * 96, 96)),
        ("up.norm.weight", (96,)),
        ("up.norm.bias", (96,)),
        ("output.weight", (num_classes, 96, 1, 1)),
    ]
    return e


def is_buffer_name(name: str) -> bool:
    return name.endswith(("attn_mask", "relative_position_index"))


def test_expected_key_list_matches_spec_counts():
    # The hand-written list itself must reproduce the counted numbers (27.17M in the paper).
    for nc, total in ((9, PARAMS_NC9), (1, PARAMS_NC1)):
        entries = expected_swin_unet_entries(nc)
        assert len(entries) == 238
        assert sum(math.prod(s) for k, s in entries if not is_buffer_name(k)) == total


def test_parameter_counts(model9):
    assert n_params(model9) == PARAMS_NC9
    assert n_params(create_model("swin-unet", num_classes=1)) == PARAMS_NC1
    enc = sum(p.numel() for n, p in model9.swin_unet.named_parameters() if n.startswith(("patch_embed.", "layers.", "norm.")))
    assert round(enc / 1e6, 2) == 20.41  # encoder (patch_embed + layers + norm), counted on the official code


def test_state_dict_keys_shapes_and_buffers(model9):
    sd = model9.state_dict()
    expected = [("swin_unet." + k, s) for k, s in expected_swin_unet_entries(9)]
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected
    # Every buffer is persistent (all of them are state-dict entries), with the official dtypes.
    buffers = dict(model9.named_buffers())
    assert sorted(buffers) == sorted(k for k, _ in expected if is_buffer_name(k))
    assert len([k for k in buffers if k.endswith("attn_mask")]) == 6
    assert all(v.dtype == torch.int64 for k, v in buffers.items() if k.endswith("relative_position_index"))
    assert all(v.dtype == torch.float32 for k, v in buffers.items() if k.endswith("attn_mask"))


def test_official_checkpoint_loads_strict(model9, tmp_path):
    # What the official trainer saves under DataParallel: "module.swin_unet.*".
    path = tmp_path / "epoch_149.pth"
    torch.save({"module." + k: v.clone() for k, v in model9.state_dict().items()}, path)
    other = SwinUnet(num_classes=9)
    result = load_swin_unet_checkpoint(other, path)
    assert not result.missing_keys and not result.unexpected_keys
    key = "swin_unet.layers_up.2.blocks.1.mlp.fc2.weight"
    assert torch.equal(other.state_dict()[key], model9.state_dict()[key])
    # And a plain strict load_state_dict of the wrapper's own dict works.
    other.load_state_dict(model9.state_dict(), strict=True)


# --------------------------------------------------------------------------------------------
# Forward, sizes and errors.
# --------------------------------------------------------------------------------------------


def test_forward_224_one_channel_repeat(model9):
    x = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        y1 = model9(x)
        y3 = model9(x.repeat(1, 3, 1, 1))
    assert y1.shape == (1, 9, 224, 224)
    assert torch.isfinite(y1).all()
    torch.testing.assert_close(y1, y3)  # SwinUnet.forward repeats a 1-channel input to 3


def test_forward_224_one_class():
    torch.manual_seed(0)
    model = create_model("swin-unet", num_classes=1).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1, 224, 224)
    assert y.min() < 0 or y.max() > 1  # logits, not a sigmoid/softmax


def test_wrong_input_size_and_channels_raise(model9):
    with pytest.raises(ValueError, match=r"built for 224x224 inputs and got 256x256"):
        model9(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match="built for 224x224 inputs and got 448x448"):
        model9(torch.randn(1, 1, 448, 448))
    with pytest.raises(ValueError, match="input channels"):
        model9(torch.randn(1, 2, 224, 224))
    with pytest.raises(ValueError, match="4-D"):
        model9(torch.randn(3, 224, 224))


@pytest.mark.parametrize("size", [256, 100, 336, (224, 256)])
def test_build_size_windows_cannot_tile_raises(size):
    with pytest.raises(ValueError, match=r"divisible by window_size=7.*multiples of 224"):
        SwinUnet(num_classes=9, img_size=size)


def test_stage_geometry_rule():
    assert [g["resolution"] for g in stage_geometry(224)] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [(g["window"], g["shift"]) for g in stage_geometry(224)] == [(7, 3), (7, 3), (7, 3), (7, 0)]
    assert [g["resolution"] for g in stage_geometry(448)] == [(112, 112), (56, 56), (28, 28), (14, 14)]
    assert [(g["window"], g["shift"]) for g in stage_geometry(448)] == [(7, 3)] * 4
    assert [g["resolution"] for g in stage_geometry((224, 448))][3] == (7, 14)


def test_build_448_mask_shapes():
    net = SwinTransformerSys(img_size=448, num_classes=9)
    sd = net.state_dict()
    assert sd["layers.0.blocks.1.attn_mask"].shape == (256, 49, 49)
    assert sd["layers.3.blocks.1.attn_mask"].shape == (4, 49, 49)  # 14x14 bottleneck now shifts too
    assert n_params(net) == PARAMS_NC9  # the size changes buffers only


def test_forward_448():
    model = SwinUnet(num_classes=9, img_size=448).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 448, 448))
    assert y.shape == (1, 9, 448, 448)
    with pytest.raises(ValueError, match="built for 448x448 inputs and got 224x224"):
        model(torch.randn(1, 1, 224, 224))


# --------------------------------------------------------------------------------------------
# Window attention, checked against independent computations.
# --------------------------------------------------------------------------------------------


def loop_relative_position_index(ws: int) -> torch.Tensor:
    coords = [(r, c) for r in range(ws) for c in range(ws)]
    idx = torch.empty(ws * ws, ws * ws, dtype=torch.long)
    for p, (rp, cp) in enumerate(coords):
        for q, (rq, cq) in enumerate(coords):
            idx[p, q] = (rp - rq + ws - 1) * (2 * ws - 1) + (cp - cq + ws - 1)
    return idx


def loop_shift_mask(h: int, w: int, ws: int, s: int) -> torch.Tensor:
    """Two tokens of a window in the rolled grid may attend iff neither or both wrapped around, per axis."""
    masks = []
    for wr in range(h // ws):
        for wc in range(w // ws):
            toks = [(wr * ws + i, wc * ws + j) for i in range(ws) for j in range(ws)]
            m = torch.zeros(ws * ws, ws * ws)
            for p, (ap, bp) in enumerate(toks):
                for q, (aq, bq) in enumerate(toks):
                    same = (ap >= h - s) == (aq >= h - s) and (bp >= w - s) == (bq >= w - s)
                    m[p, q] = 0.0 if same else -100.0
            masks.append(m)
    return torch.stack(masks)


@pytest.mark.parametrize("ws", [3, 7])
def test_relative_position_index_matches_loop(ws):
    attn = WindowAttention(dim=8, window_size=(ws, ws), num_heads=2)
    idx = attn.relative_position_index
    assert idx.dtype == torch.int64
    assert torch.equal(idx, loop_relative_position_index(ws))
    assert attn.relative_position_bias_table.shape == ((2 * ws - 1) ** 2, 2)
    assert int(idx.max()) == (2 * ws - 1) ** 2 - 1 and int(idx.min()) == 0


@pytest.mark.parametrize("h,w,ws", [(6, 6, 3), (8, 12, 4), (14, 14, 7)])
def test_shifted_window_mask_matches_loop(h, w, ws):
    blk = SwinTransformerBlock(dim=8, input_resolution=(h, w), num_heads=2, window_size=ws, shift_size=ws // 2)
    assert blk.shift_size == ws // 2
    assert torch.equal(blk.attn_mask, loop_shift_mask(h, w, ws, ws // 2))
    unshifted = SwinTransformerBlock(dim=8, input_resolution=(h, w), num_heads=2, window_size=ws, shift_size=0)
    assert unshifted.attn_mask is None and "attn_mask" not in unshifted.state_dict()


def test_window_clamped_when_grid_not_larger_than_window():
    blk = SwinTransformerBlock(dim=8, input_resolution=(7, 7), num_heads=2, window_size=7, shift_size=3)
    assert (blk.window_size, blk.shift_size) == (7, 0) and blk.attn_mask is None
    blk = SwinTransformerBlock(dim=8, input_resolution=(2, 2), num_heads=2, window_size=4, shift_size=2)
    assert (blk.window_size, blk.shift_size) == (2, 0)
    assert blk.attn.relative_position_bias_table.shape == (9, 2)


def naive_block(blk: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """Per-token reference of a (shifted) window block: explicit key sets, no partition/roll/mask tensors."""
    h, w = blk.input_resolution
    ws, s, heads = blk.window_size, blk.shift_size, blk.num_heads
    b, _, c = x.shape
    hd = c // heads
    y = blk.norm1(x)
    q, k, v = blk.attn.qkv(y).view(b, h * w, 3, heads, hd).unbind(2)
    table = blk.attn.relative_position_bias_table
    out = torch.zeros(b, h * w, heads, hd)
    for r in range(h):
        for col in range(w):
            a, bb = (r - s) % h, (col - s) % w  # position in the rolled grid
            keys, bias = [], []
            for r2 in range(h):
                for c2 in range(w):
                    a2, b2 = (r2 - s) % h, (c2 - s) % w
                    if (a // ws, bb // ws) != (a2 // ws, b2 // ws):
                        continue
                    if s and ((a >= h - s) != (a2 >= h - s) or (bb >= w - s) != (b2 >= w - s)):
                        continue
                    keys.append(r2 * w + c2)
                    bias.append(table[(a - a2 + ws - 1) * (2 * ws - 1) + (bb - b2 + ws - 1)])
            p = r * w + col
            logits = torch.einsum("bhd,bkhd->bhk", q[:, p] * blk.attn.scale, k[:, keys]) + torch.stack(bias, -1)
            out[:, p] = torch.einsum("bhk,bkhd->bhd", logits.softmax(-1), v[:, keys])
    x = x + blk.attn.proj(out.reshape(b, h * w, c))
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_block_matches_naive_window_attention(shift):
    torch.manual_seed(1)
    blk = SwinTransformerBlock(dim=8, input_resolution=(8, 12), num_heads=2, window_size=4, shift_size=shift).eval()
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 1.0)
        x = torch.randn(2, 96, 8)
        torch.testing.assert_close(blk(x), naive_block(blk, x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Pretrained loading (official load_from).
# --------------------------------------------------------------------------------------------


def swin_t_imagenet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A Swin-T ImageNet-1k state dict with the official Microsoft key names and shapes (190 entries)."""
    g = torch.Generator().manual_seed(seed)
    entries: list[tuple[str, tuple]] = [
        ("patch_embed.proj.weight", (96, 3, 4, 4)),
        ("patch_embed.proj.bias", (96,)),
        ("patch_embed.norm.weight", (96,)),
        ("patch_embed.norm.bias", (96,)),
    ]
    for i in range(4):
        c = DIMS[i]
        for j in range(SWIN_T_DEPTHS[i]):
            entries += swin_block_entries(f"layers.{i}.blocks.{j}", c, RES[i], HEADS[i], shifted=j % 2 == 1)
        if i < 3:
            entries += [
                (f"layers.{i}.downsample.reduction.weight", (2 * c, 4 * c)),
                (f"layers.{i}.downsample.norm.weight", (4 * c,)),
                (f"layers.{i}.downsample.norm.bias", (4 * c,)),
            ]
    entries += [("norm.weight", (768,)), ("norm.bias", (768,)), ("head.weight", (1000, 768)), ("head.bias", (1000,))]
    state = {}
    for name, shape in entries:
        if name.endswith("relative_position_index"):
            state[name] = torch.randint(0, (2 * WIN - 1) ** 2, shape, generator=g)
        else:
            state[name] = torch.randn(shape, generator=g)
    return state


# Model entries the official load_from leaves at init (238 - 217 = 21, as the official load_from
# run on the official module names gives).
LEFT_AT_INIT = {
    "layers_up.0.expand.weight", "layers_up.0.norm.weight", "layers_up.0.norm.bias",
    "layers_up.1.upsample.expand.weight", "layers_up.1.upsample.norm.weight", "layers_up.1.upsample.norm.bias",
    "layers_up.2.upsample.expand.weight", "layers_up.2.upsample.norm.weight", "layers_up.2.upsample.norm.bias",
    "concat_back_dim.1.weight", "concat_back_dim.1.bias", "concat_back_dim.2.weight", "concat_back_dim.2.bias",
    "concat_back_dim.3.weight", "concat_back_dim.3.bias",
    "norm_up.weight", "norm_up.bias", "up.expand.weight", "up.norm.weight", "up.norm.bias", "output.weight",
}  # fmt: skip


def test_load_swin_t_imagenet(model9, tmp_path):
    ckpt = swin_t_imagenet_state()
    assert len(ckpt) == 190
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": ckpt}, path)
    model = SwinUnet(num_classes=9)
    before = {k: v.clone() for k, v in model.swin_unet.state_dict().items()}
    report = load_swin_pretrained(model, path)

    assert report.mode == "swin-imagenet"
    assert report.checkpoint_keys == 190 and report.model_keys == 238
    assert report.candidates == 190 + 182  # every layers.* entry is mirrored into layers_up.*
    assert len(report.loaded) == 217
    assert len(report.encoder_loaded) == 130 and len(report.decoder_loaded) == 87
    assert report.shape_mismatches == []
    assert set(report.not_loaded) == LEFT_AT_INIT
    # Skipped: head (2), Swin-T stage-2 blocks 2-5 (4*14 + 2 masks) and their copies into
    # layers_up.1, stage-3 blocks copied to layers_up.0.blocks (28), downsample copies (9).
    assert len(report.skipped) == 2 + 58 + 58 + 28 + 9
    assert set(report.skipped.values()) == {"not in model"}
    for key in ("head.weight", "layers.2.blocks.5.attn_mask", "layers_up.1.blocks.3.attn.qkv.weight",
                "layers_up.0.blocks.1.mlp.fc2.bias", "layers_up.3.downsample.reduction.weight"):
        assert key in report.skipped
    assert "layers_up.1.blocks.1.attn_mask" in report.loaded
    assert "loaded 217 (encoder 130, decoder 87)" in report.summary()

    sd = model.swin_unet.state_dict()
    for enc_key in ("patch_embed.proj.weight", "layers.0.blocks.1.attn.qkv.weight", "layers.2.blocks.1.mlp.fc1.bias",
                    "layers.1.downsample.reduction.weight", "layers.3.blocks.0.attn.relative_position_bias_table", "norm.weight"):
        assert torch.equal(sd[enc_key], ckpt[enc_key]), enc_key
    for stage, up in ((0, 3), (1, 2), (2, 1)):  # encoder stage i -> decoder stage 3 - i
        for blk in (0, 1):
            for rest in ("norm1.weight", "attn.qkv.weight", "attn.relative_position_bias_table", "mlp.fc2.weight"):
                assert torch.equal(sd[f"layers_up.{up}.blocks.{blk}.{rest}"], ckpt[f"layers.{stage}.blocks.{blk}.{rest}"])
    for key in LEFT_AT_INIT:
        assert torch.equal(sd[key], before[key]), key


def test_load_swin_t_shape_mismatch_is_skipped():
    # At 448 the shifted-window masks have more windows: the official code drops those entries.
    model = SwinUnet(num_classes=9, img_size=448)
    own_mask = model.swin_unet.layers[0].blocks[1].attn_mask.clone()
    report = load_swin_pretrained(model, {"model": swin_t_imagenet_state()})
    expected = {f"layers.{i}.blocks.1.attn_mask" for i in range(3)} | {f"layers_up.{3 - i}.blocks.1.attn_mask" for i in range(3)}
    assert {m.split(":")[0] for m in report.shape_mismatches} == expected
    assert {k for k, why in report.skipped.items() if why == "shape mismatch"} == expected
    assert len(report.loaded) == 217 - 6
    assert torch.equal(model.swin_unet.layers[0].blocks[1].attn_mask, own_mask)
    assert "layers.0.blocks.1.attn_mask: checkpoint (64, 49, 49) vs model (256, 49, 49)" in report.shape_mismatches


@pytest.mark.parametrize("prefix", ["module.swin_unet.", "swin_unet."])
def test_load_swin_unet_checkpoint_branch(model9, tmp_path, prefix):
    # No "model" entry: treated as a Swin-UNet checkpoint; prefix stripped, "output" keys deleted.
    path = tmp_path / "swin_unet.pth"
    torch.save({prefix + k: v.clone() for k, v in model9.swin_unet.state_dict().items()}, path)
    target = SwinUnet(num_classes=4)
    out_before = target.swin_unet.output.weight.clone()
    report = load_swin_pretrained(target, path)
    assert report.mode == "swin-unet"
    assert report.checkpoint_keys == 238 and len(report.loaded) == 237
    assert report.skipped == {"output.weight": "deleted: name contains 'output' (as the official code does)"}
    assert report.not_loaded == ["output.weight"]
    assert torch.equal(target.swin_unet.output.weight, out_before)
    assert torch.equal(target.swin_unet.concat_back_dim[2].weight, model9.swin_unet.concat_back_dim[2].weight)


def test_loader_refuses_unsafe_pickle(tmp_path):
    path = tmp_path / "object_pickle.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.05)}, path)
    with pytest.raises(CheckpointFormatError, match=r"object_pickle\.pth.*weights_only=True"):
        load_swin_pretrained(SwinTransformerSys(img_size=224, num_classes=1, embed_dim=12, num_heads=[1, 1, 1, 1]), path)


def test_loader_rejects_non_state_dict(tmp_path):
    net = SwinTransformerSys(img_size=224, num_classes=1, embed_dim=12, num_heads=[1, 1, 1, 1])
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(CheckpointFormatError, match=r"meta\.pth.*no 'model' entry"):
        load_swin_pretrained(net, path)
    with pytest.raises(FileNotFoundError):
        load_swin_pretrained(net, tmp_path / "missing.pth")
    with pytest.raises(TypeError):
        load_swin_pretrained(torch.nn.Linear(2, 2), {"model": {}})


# --------------------------------------------------------------------------------------------
# Training step, registry metadata, search space.
# --------------------------------------------------------------------------------------------


def test_one_adam_step_lowers_ce_loss():
    # Tiny config: 64x64 input, patch 4, window 4 -> grids 16, 8, 4, 2 (stages 2-3 one window each).
    torch.manual_seed(0)
    model = create_model("swin-unet", num_classes=3, img_size=64, embed_dim=16, num_heads=[1, 2, 2, 4],
                         window_size=4, drop_path_rate=0.0).train()
    assert [g["window"] for g in model.swin_unet.geometry] == [4, 4, 4, 2]
    x = torch.randn(2, 1, 64, 64)
    target = torch.randint(0, 3, (2, 64, 64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss0 = F.cross_entropy(model(x), target)
    opt.zero_grad()
    loss0.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    with torch.no_grad():
        loss1 = F.cross_entropy(model(x), target)
    assert loss1 < loss0


def test_drop_path_rates_and_init(model9):
    # Linear 0 -> 0.2 over the 8 encoder blocks; decoder stage 3-i reuses encoder stage i's rates.
    net = model9.swin_unet

    def rate(blk):
        return 0.0 if isinstance(blk.drop_path, torch.nn.Identity) else blk.drop_path.drop_prob

    for i in range(4):
        for j in range(2):
            assert rate(net.layers[i].blocks[j]) == pytest.approx(0.2 * (2 * i + j) / 7)
            if i < 3:
                assert rate(net.layers_up[3 - i].blocks[j]) == pytest.approx(0.2 * (2 * i + j) / 7)
    assert isinstance(net.layers[0].blocks[0].drop_path, torch.nn.Identity)
    fresh = SwinUnet(num_classes=9).swin_unet  # LayerNorm 1/0, Linear bias 0 (official _init_weights)
    assert torch.equal(fresh.norm_up.weight, torch.ones(96)) and torch.equal(fresh.norm.bias, torch.zeros(768))
    assert torch.equal(fresh.concat_back_dim[1].bias, torch.zeros(384))
    assert 0.015 < float(fresh.layers[0].blocks[0].attn.qkv.weight.detach().std()) < 0.025


def test_gradient_checkpointing_matches():
    kw = dict(num_classes=2, img_size=64, embed_dim=8, num_heads=[1, 1, 2, 2], window_size=4, drop_path_rate=0.0)
    torch.manual_seed(0)
    plain = SwinUnet(**kw)
    ckpt = SwinUnet(use_checkpoint=True, **kw)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    plain(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_registry_metadata():
    info = model_info("swin-unet")
    assert info.family == "swin-unet"
    assert "Swin-Unet" in info.paper and "2105.05537" in info.paper
    assert info.input_size == (224, 224)
    (row,) = info.published
    assert row.dataset == "synapse" and row.protocol == "paper"
    assert row.source == "Swin-UNet T.1 (transcribed; some copies 79.12)"
    assert row.metrics == {
        "dsc": 79.13, "hd95": 21.55, "dsc_aorta": 85.47, "dsc_gallbladder": 66.53, "dsc_kidney_l": 83.28,
        "dsc_kidney_r": 79.61, "dsc_liver": 94.29, "dsc_pancreas": 56.58, "dsc_spleen": 90.66, "dsc_stomach": 76.60,
    }  # fmt: skip
    r = info.recipe
    assert r["optimizer"]["name"] == "SGD" and r["optimizer"]["lr"] == 0.05
    assert r["optimizer"]["momentum"] == 0.9 and r["optimizer"]["weight_decay"] == 1e-4
    assert r["scheduler"]["name"] == "poly" and r["scheduler"]["power"] == 0.9
    assert (r["epochs"], r["batch_size"], r["input_size"], r["num_classes"]) == (150, 24, (224, 224), 9)
    assert (r["loss"]["ce_weight"], r["loss"]["dice_weight"]) == (0.4, 0.6)
    assert r["drop_path_rate"] == 0.2 and r["seed"] == 1234


def test_search_space_yaml():
    from vmbench.search_space import load_spec

    spec = load_spec(ROOT / "search_spaces" / "swin_unet.yaml")
    (study,) = spec.studies
    assert (study.model, study.dataset) == ("swin-unet", "synapse")
    base = study.base  # the official recipe (train.sh / train.py / trainer.py at 0644419)
    assert (base.optim.name, base.optim.lr, base.optim.momentum, base.optim.weight_decay) == ("sgd", 0.05, 0.9, 1e-4)
    assert (spec.budget.max_epochs, base.train.batch_size, base.data.img_size) == (150, 24, 224)
    assert (base.loss.ce_weight, base.loss.dice_weight, base.scheduler.name, base.scheduler.power) == (0.4, 0.6, "poly", 0.9)
    # The recipe's searched values are the first trial, and lie inside their ranges.
    assert study.start_point["optim.lr"] == 0.05 and study.start_point["train.batch_size"] == 24
