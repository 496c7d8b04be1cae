"""TransFuse-S (Rayicer/TransFuse@3f50ab6 lib/TransFuse.py): structure, key names, forward
contract, loaders, the pretrained hook, one step.

Expected key lists and shapes are written out here from the reference structure rules
(torchvision ResNet-34 names, DeiT names, lib/TransFuse.py module names), never derived from the
model's own ``state_dict``. Pretrained files are generated with the official names and shapes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import baselines.transfuse  # noqa: F401  (registers "transfuse-s")
from baselines.resnet import resnet34
from baselines.transfuse import (
    DEEP_SUPERVISION_WEIGHTS,
    LoadReport,
    TransFuseOutput,
    TransFuseS,
    load_pretrained_deit_small,
    load_pretrained_resnet34,
    load_transfuse_checkpoint,
)
from vmbench.errors import CheckpointError
from vmbench.losses import DeepSupervisionLoss, StructureLoss
from vmbench.registry import create_model, model_info

# Counted by instantiating the official lib/TransFuse.py TransFuse_S (one class, 192x256); the
# paper (arXiv 2102.08005) quotes 26.3M.
PARAMS_S = 26_248_725
# Derived from the reference structure (not published): each of the 3 heads' last 3x3 conv 64 -> nc
# gains 64*9 + 1 parameters per extra class; the 16x16 grid adds (256 - 192) * 384 to pos_embed.
PARAMS_S_NC9 = PARAMS_S + 3 * 8 * (64 * 9 + 1)
PARAMS_S_256 = PARAMS_S + (256 - 192) * 384
SEARCH_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "transfuse.yaml"


# --------------------------------------------------------------------------------------------
# Expected keys, written from the reference structure rules.
# --------------------------------------------------------------------------------------------

Shapes = "OrderedDict[str, tuple[int, ...]]"


def bn(out: Shapes, p: str, c: int, tracked: bool = True) -> None:
    out[f"{p}.weight"] = (c,)
    out[f"{p}.bias"] = (c,)
    out[f"{p}.running_mean"] = (c,)
    out[f"{p}.running_var"] = (c,)
    if tracked:
        out[f"{p}.num_batches_tracked"] = ()


def conv(out: Shapes, p: str, cin: int, cout: int, k: int, bias: bool = True) -> None:
    out[f"{p}.weight"] = (cout, cin, k, k)
    if bias:
        out[f"{p}.bias"] = (cout,)


def torchvision_resnet34(prefix: str = "", stages: int = 4, fc: bool = True, tracked: bool = True) -> Shapes:
    """torchvision resnet34 names: conv1, bn1, layerS.B.{conv1,bn1,conv2,bn2,downsample.{0,1}}, fc."""
    out: Shapes = OrderedDict()
    conv(out, f"{prefix}conv1", 3, 64, 7, bias=False)
    bn(out, f"{prefix}bn1", 64, tracked)
    cin = 64
    for s, (blocks, width) in enumerate(zip((3, 4, 6, 3)[:stages], (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"{prefix}layer{s}.{b}"
            conv(out, f"{p}.conv1", cin, width, 3, bias=False)
            bn(out, f"{p}.bn1", width, tracked)
            conv(out, f"{p}.conv2", width, width, 3, bias=False)
            bn(out, f"{p}.bn2", width, tracked)
            if b == 0 and s > 1:
                conv(out, f"{p}.downsample.0", cin, width, 1, bias=False)
                bn(out, f"{p}.downsample.1", width, tracked)
            cin = width
    if fc:
        out[f"{prefix}fc.weight"] = (1000, 512)
        out[f"{prefix}fc.bias"] = (1000,)
    return out


def deit_small(prefix: str = "", depth: int = 12, pos_tokens: int = 197, head: bool = True) -> Shapes:
    """DeiT-S names (facebookresearch/deit, timm): embed 384, 6 heads, MLP 1536, qkv bias."""
    out: Shapes = OrderedDict()
    out[f"{prefix}cls_token"] = (1, 1, 384)
    out[f"{prefix}pos_embed"] = (1, pos_tokens, 384)
    conv(out, f"{prefix}patch_embed.proj", 3, 384, 16)
    for i in range(depth):
        p = f"{prefix}blocks.{i}"
        out[f"{p}.norm1.weight"] = (384,)
        out[f"{p}.norm1.bias"] = (384,)
        out[f"{p}.attn.qkv.weight"] = (1152, 384)
        out[f"{p}.attn.qkv.bias"] = (1152,)
        out[f"{p}.attn.proj.weight"] = (384, 384)
        out[f"{p}.attn.proj.bias"] = (384,)
        out[f"{p}.norm2.weight"] = (384,)
        out[f"{p}.norm2.bias"] = (384,)
        out[f"{p}.mlp.fc1.weight"] = (1536, 384)
        out[f"{p}.mlp.fc1.bias"] = (1536,)
        out[f"{p}.mlp.fc2.weight"] = (384, 1536)
        out[f"{p}.mlp.fc2.bias"] = (384,)
    out[f"{prefix}norm.weight"] = (384,)
    out[f"{prefix}norm.bias"] = (384,)
    if head:
        out[f"{prefix}head.weight"] = (1000, 384)
        out[f"{prefix}head.bias"] = (1000,)
    return out


def tf_conv(out: Shapes, p: str, cin: int, cout: int, k: int, use_bn: bool, bias: bool = True) -> None:
    """lib/TransFuse.py ``Conv``: ``conv`` (+ ``bn``)."""
    conv(out, f"{p}.conv", cin, cout, k, bias)
    if use_bn:
        bn(out, f"{p}.bn", cout)


def tf_up(out: Shapes, p: str, in1: int, cout: int, in2: int = 0, attn: bool = False) -> None:
    cin = in1 + in2
    conv(out, f"{p}.conv.double_conv.0", cin, cout, 3)
    bn(out, f"{p}.conv.double_conv.1", cout)
    conv(out, f"{p}.conv.double_conv.3", cout, cout, 3)
    bn(out, f"{p}.conv.double_conv.4", cout)
    conv(out, f"{p}.conv.identity.0", cin, cout, 1)
    bn(out, f"{p}.conv.identity.1", cout)
    if attn:  # Attention_block(F_g=in1, F_l=in2, F_int=cout)
        conv(out, f"{p}.attn_block.W_g.0", in1, cout, 1)
        bn(out, f"{p}.attn_block.W_g.1", cout)
        conv(out, f"{p}.attn_block.W_x.0", in2, cout, 1)
        bn(out, f"{p}.attn_block.W_x.1", cout)
        conv(out, f"{p}.attn_block.psi.0", cout, 1, 1)
        bn(out, f"{p}.attn_block.psi.1", 1)


def tf_bifusion(out: Shapes, p: str, ch_1: int, ch_2: int, r_2: int, ch_int: int, ch_out: int) -> None:
    conv(out, f"{p}.fc1", ch_2, ch_2 // r_2, 1)
    conv(out, f"{p}.fc2", ch_2 // r_2, ch_2, 1)
    tf_conv(out, f"{p}.spatial", 2, 1, 7, use_bn=True, bias=False)
    tf_conv(out, f"{p}.W_g", ch_1, ch_int, 1, use_bn=True)
    tf_conv(out, f"{p}.W_x", ch_2, ch_int, 1, use_bn=True)
    tf_conv(out, f"{p}.W", ch_int, ch_int, 3, use_bn=True)
    cin, mid = ch_1 + ch_2 + ch_int, ch_out // 2
    bn(out, f"{p}.residual.bn1", cin)
    conv(out, f"{p}.residual.conv1.conv", cin, mid, 1)
    bn(out, f"{p}.residual.bn2", mid)
    conv(out, f"{p}.residual.conv2.conv", mid, mid, 3)
    bn(out, f"{p}.residual.bn3", mid)
    conv(out, f"{p}.residual.conv3.conv", mid, ch_out, 1)
    conv(out, f"{p}.residual.skip_layer.conv", cin, ch_out, 1)


def transfuse_s_keys(num_classes: int = 1, tokens: int = 192) -> Shapes:
    """The released TransFuse-S checkpoint layout (``TransFuse-19_best.pth``), in the reference registration order."""
    out: Shapes = OrderedDict()
    out.update(torchvision_resnet34("resnet.", stages=3, fc=False))
    out.update(deit_small("transformer.", depth=8, pos_tokens=tokens, head=False))
    tf_up(out, "up1", 384, 128)
    tf_up(out, "up2", 128, 64)
    tf_conv(out, "final_x.0", 256, 64, 1, use_bn=True)
    tf_conv(out, "final_x.1", 64, 64, 3, use_bn=True)
    tf_conv(out, "final_x.2", 64, num_classes, 3, use_bn=False)
    for head in ("final_1", "final_2"):
        tf_conv(out, f"{head}.0", 64, 64, 3, use_bn=True)
        tf_conv(out, f"{head}.1", 64, num_classes, 3, use_bn=False)
    tf_bifusion(out, "up_c", 256, 384, 4, 256, 256)
    tf_bifusion(out, "up_c_1_1", 128, 128, 2, 128, 128)
    tf_up(out, "up_c_1_2", 256, 128, 128, attn=True)
    tf_bifusion(out, "up_c_2_1", 64, 64, 1, 64, 64)
    tf_up(out, "up_c_2_2", 128, 64, 64, attn=True)
    return out


# --------------------------------------------------------------------------------------------
# Fixtures.
# --------------------------------------------------------------------------------------------


# On a shared 2-core machine intra-op threads contend badly (a 32x32 forward: 9 ms on one thread,
# ~0.9 s on two while another process runs).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> TransFuseS:
    torch.manual_seed(0)
    return TransFuseS()


@pytest.fixture(scope="module")
def model_256() -> TransFuseS:
    torch.manual_seed(0)
    return TransFuseS(img_size=(256, 256))


def tiny(**kw) -> TransFuseS:
    torch.manual_seed(0)
    cfg = dict(img_size=(32, 32), depth=1, resnet_layers=(1, 1, 1))
    cfg.update(kw)
    return TransFuseS(**cfg)


def random_state(shapes: Shapes, seed: int) -> "OrderedDict[str, torch.Tensor]":
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((k, torch.randn(s, generator=gen)) for k, s in shapes.items())


# --------------------------------------------------------------------------------------------
# Structure.
# --------------------------------------------------------------------------------------------


def test_parameter_counts(model, model_256):
    assert sum(p.numel() for p in model.parameters()) == PARAMS_S
    assert sum(p.numel() for p in model.resnet.parameters()) == 8_170_304  # "CNN 8.17M"
    assert sum(p.numel() for p in model.transformer.parameters()) == 14_565_888  # "DeiT 14.57M"
    assert sum(p.numel() for p in model_256.parameters()) == PARAMS_S_256
    assert sum(p.numel() for p in resnet34().parameters()) == 21_797_672  # torchvision ResNet-34


def test_parameter_count_nine_classes():
    m = TransFuseS(num_classes=9)
    assert sum(p.numel() for p in m.parameters()) == PARAMS_S_NC9 == 26_262_573


def test_state_dict_keys_and_shapes_match_release(model):
    expected = transfuse_s_keys()
    assert len(expected) == 598  # the released TransFuse-19_best.pth has 598 entries
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == list(expected.items())
    assert not any(k.startswith(("resnet.layer4.", "resnet.fc.", "transformer.head.")) for k, _ in got)


def test_state_dict_keys_256_variant(model_256):
    got = [(k, tuple(v.shape)) for k, v in model_256.state_dict().items()]
    assert got == list(transfuse_s_keys(tokens=256).items())


def test_initialisation_follows_reference():
    m = tiny()
    # lib/DeiT.py replaces the initialised pos_embed by zeros; only ImageNet weights fill it.
    assert torch.count_nonzero(m.transformer.pos_embed) == 0
    assert torch.count_nonzero(m.transformer.cls_token) > 0
    for bn_ in (m.up_c.residual.bn1, m.up_c_1_2.attn_block.psi[1], m.final_x[0].bn):
        assert torch.all(bn_.weight == 1) and torch.all(bn_.bias == 0)


def test_release_layout_loads_strict(model):
    # A state dict with exactly the release's names and shapes loads with strict=True.
    state = random_state(transfuse_s_keys(), seed=3)
    m = TransFuseS()
    m.load_state_dict(state, strict=True)
    report = load_transfuse_checkpoint(m, {f"module.{k}": v for k, v in state.items()})
    assert len(report.loaded) == 598 and report.ok and report.resized == []
    assert torch.equal(m.up_c_2_2.attn_block.psi[0].weight, state["up_c_2_2.attn_block.psi.0.weight"])


# --------------------------------------------------------------------------------------------
# Forward contract.
# --------------------------------------------------------------------------------------------


def test_forward_native_eval_and_train(model):
    x = torch.randn(1, 3, 192, 256)
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 1, 192, 256)
    model.train()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        model.eval()
    assert isinstance(out, TransFuseOutput) and len(out) == 3
    assert out._fields == ("map_x", "map_1", "map_2")
    assert all(o.shape == (1, 1, 192, 256) for o in out)


def test_forward_256_variant(model_256):
    assert model_256.transformer.pos_embed.shape == (1, 256, 384)
    model_256.eval()
    with torch.no_grad():
        y = model_256(torch.randn(1, 3, 256, 256))
    assert y.shape == (1, 1, 256, 256)


def test_wrong_input_size_is_a_clear_error(model, model_256):
    with pytest.raises(ValueError, match=r"built for 192x256"):
        model(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"built for 256x256.*img_size=\(192, 256\)"):
        model_256(torch.randn(1, 3, 192, 256))
    with pytest.raises(ValueError, match="multiples of 16"):
        TransFuseS(img_size=(200, 256))


def test_channel_handling():
    m = tiny(num_classes=2).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), m(x.repeat(1, 3, 1, 1)))
    assert m(x).shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(3, 32, 32))
    one = tiny(in_chans=1).eval()
    with pytest.raises(ValueError, match="1 input channels"):
        one(torch.randn(1, 3, 32, 32))


def test_output_selection_and_head_order():
    m = tiny(drop_rate=0.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert isinstance(m(x), TransFuseOutput)  # train + deep_supervision
        m.deep_supervision = False
        assert isinstance(m(x), torch.Tensor)
        m.deep_supervision = True
        m.eval()
        single = m(x)
        both = m.forward_all(x)
        assert torch.equal(single, both.map_2)  # eval returns map_2, the prediction head
        # map_1 is the transformer-branch head: changing the CNN stem leaves it unchanged.
        m.resnet.conv1.weight.mul_(3.0)
        changed = m.forward_all(x)
    assert torch.equal(changed.map_1, both.map_1)
    assert not torch.allclose(changed.map_x, both.map_x)
    assert not torch.allclose(changed.map_2, both.map_2)


def test_head_align_corners_switch():
    a = tiny().eval()
    b = tiny(head_align_corners=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape and not torch.allclose(ya, yb)


# --------------------------------------------------------------------------------------------
# Pretrained loaders on generated files with the official names.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    # resnet34-333f7ec4.pth predates BatchNorm's num_batches_tracked: 218 - 36 = 182 tensors.
    state = random_state(torchvision_resnet34(tracked=False), seed=1)
    assert len(state) == 182
    path = tmp_path_factory.mktemp("ckpt") / "resnet34-333f7ec4.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def deit_state():
    state = random_state(deit_small(), seed=2)
    assert len(state) == 152
    # pos_embed with a recognisable layout: cls entry 1000, grid entry (r, c) = r + c / 100 + ch / 1e4,
    # an affine function of (r, c), which bilinear interpolation reproduces exactly.
    pe = torch.empty(1, 197, 384)
    pe[0, 0] = 1000.0
    ch = torch.arange(384) / 1e4
    for r in range(14):
        for c in range(14):
            pe[0, 1 + r * 14 + c] = r + c / 100 + ch
    state["pos_embed"] = pe
    return state


@pytest.fixture(scope="module")
def deit_file(deit_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "deit_small_patch16_224-cd65a155.pth"
    torch.save({"model": deit_state, "optimizer": {}, "epoch": 299}, path)
    return path


def test_resnet_loader(model, resnet_file):
    path, state = resnet_file
    decoder_before = model.final_2[0].conv.weight.clone()
    vit_before = model.transformer.blocks[0].attn.qkv.weight.clone()
    report = load_pretrained_resnet34(model, path)
    assert isinstance(report, LoadReport) and report.ok
    skipped = [k for k in state if k.startswith(("layer4.", "fc."))]
    assert len(skipped) == 37 and report.skipped == skipped
    assert len(report.loaded) == 182 - 37 == 145
    assert report.missing == [] and report.unexpected == [] and report.resized == []
    assert str(path) in report.source
    sd = model.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer3.5.bn2.bias", "layer1.2.conv2.weight"):
        assert torch.equal(sd[f"resnet.{key}"], state[key]), key
    assert torch.equal(model.final_2[0].conv.weight, decoder_before)
    assert torch.equal(model.transformer.blocks[0].attn.qkv.weight, vit_before)


def test_resnet_loader_strictness(resnet_file):
    _, state = resnet_file
    broken = OrderedDict(state)
    del broken["layer3.5.conv2.weight"]
    broken["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    m = tiny(resnet_layers=(3, 4, 6))
    before = m.resnet.conv1.weight.clone()
    with pytest.raises(CheckpointError, match="layer3.5.conv2.weight"):
        load_pretrained_resnet34(m, broken)
    assert torch.equal(m.resnet.conv1.weight, before)  # nothing copied on failure
    report = load_pretrained_resnet34(m.resnet, broken, strict=False)
    assert report.missing == ["layer3.5.conv2.weight"]
    assert report.shape_mismatches and report.shape_mismatches[0].startswith("layer1.0.conv1.weight")
    assert torch.equal(m.resnet.conv1.weight, state["conv1.weight"])


def test_deit_loader_native_grid(model, deit_file, deit_state):
    report = load_pretrained_deit_small(model, deit_file)
    assert report.ok
    skipped = [k for k in deit_state if k.startswith("head.") or int(k.split(".")[1] if k.startswith("blocks.") else 0) >= 8]
    assert len(skipped) == 4 * 12 + 2 and report.skipped == skipped
    assert len(report.loaded) == 152 - 50 == 102
    assert report.resized == [
        "pos_embed: (1, 197, 384) -> (1, 192, 384) (cls entry dropped, 14x14 -> 12x16 grid, bilinear, align_corners=True)"
    ]
    t = model.transformer
    assert torch.equal(t.cls_token, deit_state["cls_token"])  # cls token kept as is
    assert torch.equal(t.blocks[7].mlp.fc2.weight, deit_state["blocks.7.mlp.fc2.weight"])
    assert torch.equal(t.blocks[3].attn.qkv.bias, deit_state["blocks.3.attn.qkv.bias"])
    assert torch.equal(t.norm.weight, deit_state["norm.weight"])
    assert torch.equal(t.patch_embed.proj.weight, deit_state["patch_embed.proj.weight"])
    check_pos_embed(t.pos_embed, (12, 16))


def test_deit_loader_256_grid(model_256, deit_file, deit_state):
    report = load_pretrained_deit_small(model_256, deit_file)
    assert report.resized == [
        "pos_embed: (1, 197, 384) -> (1, 256, 384) (cls entry dropped, 14x14 -> 16x16 grid, bilinear, align_corners=True)"
    ]
    assert torch.equal(model_256.transformer.cls_token, deit_state["cls_token"])
    check_pos_embed(model_256.transformer.pos_embed, (16, 16))


def check_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> None:
    gh, gw = grid
    assert pos_embed.shape == (1, gh * gw, 384)
    assert pos_embed.max() < 100  # the cls entry (1000) was dropped, not interpolated in
    ch = torch.arange(384) / 1e4
    for i, j in ((0, 0), (gh - 1, gw - 1), (gh // 2, 3), (1, gw - 2)):
        r, c = i * 13 / (gh - 1), j * 13 / (gw - 1)  # align_corners=True source coordinates
        assert torch.allclose(pos_embed[0, i * gw + j], r + c / 100 + ch, atol=1e-4), (i, j)


def test_deit_loader_rejects_wrong_architecture(deit_state):
    wider = OrderedDict(deit_state)
    wider["blocks.0.mlp.fc1.weight"] = torch.zeros(3072, 384)
    wider["dist_token"] = torch.zeros(1, 1, 384)
    m = tiny(depth=2)
    with pytest.raises(CheckpointError, match="blocks.0.mlp.fc1.weight"):
        load_pretrained_deit_small(m, {"model": wider})
    report = load_pretrained_deit_small(m, {"model": wider}, strict=False)
    assert report.unexpected == ["dist_token"]
    assert len(report.shape_mismatches) == 1
    assert "blocks.1.norm1.weight" in report.loaded and "blocks.2.norm1.weight" in report.skipped


class _Opaque:
    """Any non-tensor object makes a pickle unreadable with weights_only=True."""


def test_unsafe_file_is_refused_without_retry(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth"
    torch.save({"model": _Opaque()}, path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    m = tiny()
    for loader in (load_pretrained_resnet34, load_pretrained_deit_small, load_transfuse_checkpoint):
        with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only=True"):
            loader(m, path)
    assert calls == [True, True, True]
    with pytest.raises(FileNotFoundError):
        load_pretrained_resnet34(m, tmp_path / "absent.pth")


# --------------------------------------------------------------------------------------------
# The registry's pretrained hook: one path, a folder of ImageNet files or a TransFuse-S file.
# --------------------------------------------------------------------------------------------


def test_pretrained_hook_loads_both_imagenet_files_from_a_folder(model, resnet_file, deit_state, tmp_path):
    folder = tmp_path / "pretrained"  # the reference reads pretrained/<file> in lib/TransFuse.py and lib/DeiT.py
    folder.mkdir()
    _, resnet_state = resnet_file
    torch.save(resnet_state, folder / "resnet34-333f7ec4.pth")
    torch.save({"model": deit_state}, folder / "deit_small_patch16_224-cd65a155.pth")
    decoder_before = model.final_2[0].conv.weight.clone()
    report = model_info("transfuse-s").load_pretrained(model, str(folder))
    assert set(report.parts) == {"resnet", "transformer"} and report.ok
    assert len(report.parts["resnet"].loaded) == 145 and len(report.parts["transformer"].loaded) == 102
    assert model.pretrained_reports == report.parts
    assert torch.equal(model.resnet.layer3[5].bn2.bias, resnet_state["layer3.5.bn2.bias"])
    assert torch.equal(model.transformer.blocks[7].mlp.fc2.weight, deit_state["blocks.7.mlp.fc2.weight"])
    check_pos_embed(model.transformer.pos_embed, (12, 16))
    assert torch.equal(model.final_2[0].conv.weight, decoder_before)  # the decoder keeps its init
    assert str(report).splitlines()[0].endswith("shape mismatches 0") and "deit_small" in str(report)


def test_pretrained_hook_loads_a_transfuse_checkpoint_file(tmp_path):
    src, dst = tiny(), tiny(head_align_corners=False)  # the release's heads (authors' 2021 code)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.equal(dst.up1.conv.double_conv[0].weight, src.up1.conv.double_conv[0].weight)
    path = tmp_path / "TransFuse-19_best.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)  # as saved under DataParallel
    report = model_info("transfuse-s").load_pretrained(dst, str(path))
    assert set(report.parts) == {"checkpoint"} and report.ok
    assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), src.state_dict().values()))


def test_pretrained_hook_errors_name_the_path(resnet_file, tmp_path):
    m = tiny()
    before = m.resnet.conv1.weight.clone()
    folder = tmp_path / "only_resnet"
    folder.mkdir()
    torch.save(resnet_file[1], folder / "resnet34-333f7ec4.pth")
    with pytest.raises(CheckpointError, match=r"only_resnet.*lacks deit_small_patch16_224-cd65a155\.pth.*found resnet34"):
        model_info("transfuse-s").load_pretrained(m, str(folder))
    assert torch.equal(m.resnet.conv1.weight, before)  # nothing loaded before the check
    with pytest.raises(CheckpointError, match=r"absent.*no such file or folder"):
        model_info("transfuse-s").load_pretrained(m, str(tmp_path / "absent"))


def test_checkpoint_roundtrip_and_pos_embed_resize(tmp_path):
    src = tiny(img_size=(32, 64))  # 2x4 token grid
    path = tmp_path / "tiny.pth"
    torch.save(src.state_dict(), path)
    same = tiny(img_size=(32, 64))
    assert load_transfuse_checkpoint(same, path).ok
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), src.state_dict().values()))
    square = tiny(img_size=(64, 64))  # 4x4 grid
    report = load_transfuse_checkpoint(square, path, src_grid=(2, 4))
    assert report.ok and report.resized[0].startswith("transformer.pos_embed: (1, 8, 384) -> (1, 16, 384)")


# --------------------------------------------------------------------------------------------
# Losses and one optimisation step.
# --------------------------------------------------------------------------------------------


# The official train_isic.py weights in the model's output order (map_x, map_1, map_2).
OUTPUT_WEIGHTS = tuple(DEEP_SUPERVISION_WEIGHTS[name] for name in TransFuseOutput._fields)


def test_structure_loss_properties():
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    structure_loss = StructureLoss()
    good = structure_loss(torch.where(mask > 0, 8.0, -8.0), mask)
    bad = structure_loss(torch.where(mask > 0, -8.0, 8.0), mask)
    assert good.dim() == 0 and 0 <= good < 0.05 < bad
    assert math.isclose(sum(DEEP_SUPERVISION_WEIGHTS.values()), 1.0)


def test_one_adam_step_lowers_weighted_deep_supervision_loss():
    m = tiny(img_size=(64, 64), drop_rate=0.0)  # no dropout: the same batch gives the same loss
    m.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    target = torch.zeros(2, 1, 64, 64)
    target[0, :, 10:40, 12:50] = 1
    target[1, :, 30:60, 5:30] = 1
    bce = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.5, 0.999))

    out = m(x)
    assert isinstance(out, TransFuseOutput)
    deep_supervision_loss = DeepSupervisionLoss(bce, OUTPUT_WEIGHTS)
    loss0 = deep_supervision_loss(out, target)
    manual = 0.5 * bce(out.map_2, target) + 0.3 * bce(out.map_1, target) + 0.2 * bce(out.map_x, target)
    assert torch.allclose(loss0, manual)
    opt.zero_grad()
    loss0.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 2.0)
    opt.step()
    with torch.no_grad():
        loss1 = deep_supervision_loss(m(x), target)
    assert loss1 < loss0
    official = DeepSupervisionLoss(StructureLoss(), OUTPUT_WEIGHTS)
    assert torch.isfinite(official(out, target))  # the official structure loss runs too


# --------------------------------------------------------------------------------------------
# Registry and search space.
# --------------------------------------------------------------------------------------------


def test_registry_metadata():
    info = model_info("transfuse-s")
    assert info.family == "transfuse" and info.input_size == (192, 256)
    assert "TransFuse" in info.paper and "MICCAI 2021" in info.paper
    rows = {(r.dataset, tuple(sorted(r.metrics))): r for r in info.published}
    assert len(info.published) == 3
    p2 = rows[("isic2017", ("acc_per_image", "dice_per_image", "iou_per_image"))]
    assert p2.metrics == {"iou_per_image": 79.5, "dice_per_image": 87.2, "acc_per_image": 94.4}
    assert "P2" in p2.source and "unverified" in p2.source
    p1 = [r for r in info.published if "miou" in r.metrics]
    assert {r.dataset: (r.metrics["miou"], r.metrics["dsc"]) for r in p1} == {
        "isic2017": (79.21, 88.40),
        "isic2018": (80.63, 89.27),
    }
    assert all("256x256" in r.source and "unverified" in r.source for r in p1)
    recipe = info.recipe
    assert recipe["optimizer"] == {"name": "Adam", "lr": 7e-5, "betas": (0.5, 0.999), "weight_decay": 0.0}
    assert (recipe["epochs"], recipe["batch_size"], recipe["grad_clip"]) == (25, 16, 2.0)
    assert recipe["loss_weights"] == {"map_x": 0.2, "map_1": 0.3, "map_2": 0.5}
    assert recipe["input_size"] == (192, 256)


def test_create_model_through_registry():
    m = create_model("transfuse-s", num_classes=3, img_size=(32, 32), depth=1)
    assert isinstance(m, TransFuseS) and m.num_classes == 3 and len(m.transformer.blocks) == 1
    assert m.pretrained_reports == {}


def test_search_space_file():
    from vmbench.search_space import load_spec

    spec = load_spec(SEARCH_SPACE)
    (study,) = spec.studies
    assert (study.model, study.dataset) == ("transfuse-s", "isic2017")
    base = study.base  # train_isic.py's recipe (Adam 7e-5, betas (0.5, 0.999), batch 16, 25 epochs)
    assert (base.optim.name, base.optim.lr, base.optim.betas) == ("adam", 7e-5, (0.5, 0.999))
    assert (spec.budget.max_epochs, base.train.batch_size, base.train.grad_clip) == (25, 16, 2.0)
    assert tuple(base.data.img_size) == (192, 256) and base.loss.name == "structure"
    assert study.start_point["optim.lr"] == 7e-5
    # The engine weights the heads from the model, in its output order (map_x, map_1, map_2).
    assert create_model("transfuse-s").deep_supervision_weights == (0.2, 0.3, 0.5)
