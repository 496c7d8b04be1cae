"""Conformance tests for VM-UNet (vmbench/models/vmunet.py) against the official code.

Expected values (parameter counts, key names and shapes, init and drop-path rules) are written
here from the official ``models/vmunet/{vmunet,vmamba}.py`` (JCruan519/VM-UNet@43c495b; parameter
counts from instantiating that code on CPU) and the paper's configuration
(``configs/config_setting{,_synapse}.py``), never read back from the model. Everything runs on CPU
in a few seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vmbench
from vmbench.models.layers import DropPath
from vmbench.models.vmunet import (
    SS2D,
    VSSM,
    Final_PatchExpand2D,
    PatchExpand2D,
    PatchMerging2D,
    VMUNet,
    VSSBlock,
)
from vmbench.ops import selective_scan_ref

N_STATE = 16
PAPER_ENC = {0: (96, 2), 1: (192, 2), 2: (384, 2), 3: (768, 2)}  # stage -> (C, depth)
PAPER_DEC = {0: (768, 2), 1: (384, 2), 2: (192, 2), 3: (96, 1)}


@pytest.fixture(scope="module")
def paper_model() -> VMUNet:
    torch.manual_seed(0)
    return VMUNet().eval()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- sizes and keys


def test_parameter_counts_paper_config(paper_model):
    assert n_params(paper_model) == 27_427_561  # "27.43M" (paper), num_classes = 1
    assert n_params(VMUNet(num_classes=9)) == 27_427_761


@pytest.mark.parametrize("C", [96, 192, 384, 768])
def test_block_parameter_formula(C):
    R = math.ceil(C / 16)
    block = VSSBlock(hidden_dim=C)
    assert n_params(block) == 6 * C * C + 16 * C * R + 426 * C
    assert n_params(block) == {96: 105_408, 192: 339_840, 384: 1_195_776, 768: 4_455_936}[C]


def spec_block_keys(prefix: str, C: int) -> dict[str, tuple[int, ...]]:
    """The 13 tensors of one VSS block (VSSBlock + SS2D of vmamba.py), D = 2C, R = ceil(C/16), N = 16."""
    D, R, N = 2 * C, math.ceil(C / 16), N_STATE
    a = f"{prefix}.self_attention"
    return {
        f"{prefix}.ln_1.weight": (C,),
        f"{prefix}.ln_1.bias": (C,),
        f"{a}.x_proj_weight": (4, R + 2 * N, D),
        f"{a}.dt_projs_weight": (4, D, R),
        f"{a}.dt_projs_bias": (4, D),
        f"{a}.A_logs": (4 * D, N),
        f"{a}.Ds": (4 * D,),
        f"{a}.in_proj.weight": (2 * D, C),
        f"{a}.conv2d.weight": (D, 1, 3, 3),
        f"{a}.conv2d.bias": (D,),
        f"{a}.out_norm.weight": (D,),
        f"{a}.out_norm.bias": (D,),
        f"{a}.out_proj.weight": (C, D),
    }


def spec_state_dict_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    p = "vmunet"
    keys = {
        f"{p}.patch_embed.proj.weight": (96, 3, 4, 4),
        f"{p}.patch_embed.proj.bias": (96,),
        f"{p}.patch_embed.norm.weight": (96,),
        f"{p}.patch_embed.norm.bias": (96,),
    }
    for i, (C, depth) in PAPER_ENC.items():
        for j in range(depth):
            keys.update(spec_block_keys(f"{p}.layers.{i}.blocks.{j}", C))
        if i < 3:
            keys[f"{p}.layers.{i}.downsample.reduction.weight"] = (2 * C, 4 * C)
            keys[f"{p}.layers.{i}.downsample.norm.weight"] = (4 * C,)
            keys[f"{p}.layers.{i}.downsample.norm.bias"] = (4 * C,)
    for i, (C, depth) in PAPER_DEC.items():
        for j in range(depth):
            keys.update(spec_block_keys(f"{p}.layers_up.{i}.blocks.{j}", C))
        if i > 0:  # PatchExpand2D(C): Linear(2C -> 4C), LayerNorm(C)
            keys[f"{p}.layers_up.{i}.upsample.expand.weight"] = (4 * C, 2 * C)
            keys[f"{p}.layers_up.{i}.upsample.norm.weight"] = (C,)
            keys[f"{p}.layers_up.{i}.upsample.norm.bias"] = (C,)
    keys[f"{p}.final_up.expand.weight"] = (384, 96)
    keys[f"{p}.final_up.norm.weight"] = (24,)
    keys[f"{p}.final_up.norm.bias"] = (24,)
    keys[f"{p}.final_conv.weight"] = (num_classes, 24, 1, 1)
    keys[f"{p}.final_conv.bias"] = (num_classes,)
    return keys


def test_state_dict_keys_and_shapes(paper_model):
    expected = spec_state_dict_shapes(1)
    assert len(expected) == 222  # 15 blocks x 13 + 27
    got = {k: tuple(v.shape) for k, v in paper_model.state_dict().items()}
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert got == expected
    # Spot checks against shapes of the official state dict.
    assert got["vmunet.layers.2.downsample.reduction.weight"] == (768, 1536)
    assert got["vmunet.layers_up.1.upsample.expand.weight"] == (1536, 768)
    assert got["vmunet.layers.0.blocks.0.self_attention.x_proj_weight"] == (4, 38, 192)


def test_state_dict_nine_classes():
    got = {k: tuple(v.shape) for k, v in VMUNet(num_classes=9).state_dict().items()}
    assert got == spec_state_dict_shapes(9)


def test_official_default_depths_count():
    # The official class defaults build a different, 44.27 M network (VMUNet.__init__'s defaults).
    model = vmbench.create_model("vmunet", depths=[2, 2, 9, 2], depths_decoder=[2, 9, 2, 2])
    assert n_params(model) == 44_273_833


# --------------------------------------------------------------------------- SS2D maths


def ss2d_per_direction(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D.forward_corev0 (vmamba.py:378) rewritten as four independent scans over permuted tokens, summed.

    Written from the official forward with plain ops: in_proj (x = first half, z = second half), depthwise
    conv + SiLU, then for each direction k its own x_proj[k], dt_proj[k] (+ bias[k]), A and D rows
    k*D..(k+1)*D-1, a Mamba-1 scan (selective_scan_ref), scatter back, sum; LayerNorm(eps 1e-5),
    gate SiLU(z), out_proj.
    """
    B, H, W, _ = x.shape
    D, R, N, L = m.d_inner, m.dt_rank, m.d_state, H * W
    xz = x @ m.in_proj.weight.T
    xi, z = xz[..., :D], xz[..., D:]
    xi = F.silu(F.conv2d(xi.permute(0, 3, 1, 2), m.conv2d.weight, m.conv2d.bias, padding=1, groups=D))
    tokens = xi.reshape(B, D, L)  # token index h*W + w
    grid = torch.arange(L).view(H, W)
    orders = [grid.flatten(), grid.T.flatten(), grid.flatten().flip(0), grid.T.flatten().flip(0)]
    y = torch.zeros(B, D, L, dtype=x.dtype)
    for k, order in enumerate(orders):
        u = tokens[:, :, order]  # step t of direction k visits token order[t]
        proj = torch.einsum("cd,bdl->bcl", m.x_proj_weight[k], u)
        dt_low, Bk, Ck = proj[:, :R], proj[:, R : R + N], proj[:, R + N :]
        delta = torch.einsum("dr,brl->bdl", m.dt_projs_weight[k], dt_low)
        rows = slice(k * D, (k + 1) * D)
        out = selective_scan_ref(
            u,
            delta,
            -torch.exp(m.A_logs[rows]),
            Bk,
            Ck,
            D=m.Ds[rows],
            delta_bias=m.dt_projs_bias[k],
            delta_softplus=True,
        )
        back = torch.empty_like(out)
        back[:, :, order] = out
        y = y + back
    y = y.permute(0, 2, 1).reshape(B, H, W, D)
    y = F.layer_norm(y, (D,), m.out_norm.weight, m.out_norm.bias, eps=1e-5)
    return (y * F.silu(z)) @ m.out_proj.weight.T


def randomised_ss2d(d_model=24, dtype=torch.float64, seed=0) -> SS2D:
    """An SS2D whose parameters all differ per direction/channel, so index mix-ups show up."""
    torch.manual_seed(seed)
    m = SS2D(d_model=d_model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name == "A_logs":
                p.copy_(torch.randn_like(p) * 0.5)
            elif name == "dt_projs_bias":
                p.copy_(torch.randn_like(p) - 2.0)
            elif name.startswith("out_norm"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.3)
    return m.to(dtype)


def test_ss2d_matches_per_direction_scans_fp64(monkeypatch):
    monkeypatch.setenv("VMBENCH_SCAN_BACKEND", "reference")
    m = randomised_ss2d()
    x = torch.randn(2, 3, 5, 24, dtype=torch.float64)  # H != W catches H/W mix-ups in the merge
    expected = ss2d_per_direction(m, x)
    got = m(x)
    assert got.dtype == torch.float64
    assert expected.abs().max() > 0.1  # a non-trivial output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_ss2d_matches_per_direction_scans_fp32_torch_backend(monkeypatch):
    monkeypatch.setenv("VMBENCH_SCAN_BACKEND", "torch")
    m64 = randomised_ss2d()
    x64 = torch.randn(2, 5, 3, 24, dtype=torch.float64)
    expected = ss2d_per_direction(m64, x64)
    got = m64.float()(x64.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5 * max(1.0, expected.abs().max().item()))


def test_in_proj_halves_x_first_z_second():
    m = randomised_ss2d(dtype=torch.float32)
    D = m.d_inner
    x = torch.randn(1, 4, 4, 24)
    with torch.no_grad():
        m.in_proj.weight[D:] = 0  # z = 0 -> gate SiLU(0) = 0 -> output exactly 0
    assert torch.all(m(x) == 0)
    m = randomised_ss2d(dtype=torch.float32)
    with torch.no_grad():
        m.in_proj.weight[:D] = 0  # x = 0: the conv bias still drives the scan, output non-zero
    assert m(x).abs().max() > 0


# --------------------------------------------------------------------------- small modules


def test_patch_merging_order():
    torch.manual_seed(1)
    C, H, W = 3, 4, 6
    m = PatchMerging2D(dim=C)
    with torch.no_grad():
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    x = torch.randn(2, H, W, C)
    expected = torch.empty(2, H // 2, W // 2, 4 * C)
    for i in range(H // 2):
        for j in range(W // 2):
            # (row offset, col offset): (0,0), (1,0), (0,1), (1,1) -- rows first, Swin's order.
            expected[:, i, j] = torch.cat(
                [x[:, 2 * i, 2 * j], x[:, 2 * i + 1, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j + 1]], dim=-1
            )
    expected = F.layer_norm(expected, (4 * C,), m.norm.weight, m.norm.bias, eps=1e-5) @ m.reduction.weight.T
    torch.testing.assert_close(m(x), expected)
    assert tuple(m.reduction.weight.shape) == (2 * C, 4 * C) and m.reduction.bias is None


@pytest.mark.parametrize("cls,dim,scale", [(PatchExpand2D, 5, 2), (Final_PatchExpand2D, 8, 4)])
def test_patch_expand_order(cls, dim, scale):
    torch.manual_seed(2)
    m = cls(dim=dim, dim_scale=scale)
    c_in = m.expand.in_features
    c = m.norm.normalized_shape[0]
    with torch.no_grad():
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    x = torch.randn(2, 3, 2, c_in)
    lin = x @ m.expand.weight.T
    expected = torch.empty(2, 3 * scale, 2 * scale, c)
    for i in range(3):
        for j in range(2):
            for p1 in range(scale):
                for p2 in range(scale):
                    g = p1 * scale + p2  # (p1 p2 c): p1 slowest, c fastest
                    expected[:, i * scale + p1, j * scale + p2] = lin[:, i, j, g * c : (g + 1) * c]
    expected = F.layer_norm(expected, (c,), m.norm.weight, m.norm.bias, eps=1e-5)
    torch.testing.assert_close(m(x), expected)


def test_patch_expand_widths():
    m = PatchExpand2D(dim=384)  # output width 384; input 768 (vmamba.py:214, dim = output width)
    assert tuple(m.expand.weight.shape) == (1536, 768) and m.norm.normalized_shape == (384,)
    f = Final_PatchExpand2D(dim=96, dim_scale=4)
    assert tuple(f.expand.weight.shape) == (384, 96) and f.norm.normalized_shape == (24,)


# --------------------------------------------------------------------------- U-Net wiring


def tiny_vssm(num_classes=2) -> VSSM:
    torch.manual_seed(3)
    return VSSM(num_classes=num_classes, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1)).eval()


def spec_forward(v: VSSM, x: torch.Tensor) -> torch.Tensor:
    """VSSM.forward_features(_up) (vmamba.py:722-741) by hand: skips are stage inputs, added before
    each PatchExpand; s0 unused."""
    x = v.patch_embed(x)
    s = []
    for layer in v.layers:
        s.append(x)
        for blk in layer.blocks:
            x = blk(x)
        if layer.downsample is not None:
            x = layer.downsample(x)
    for i, layer in enumerate(v.layers_up):
        if i > 0:
            x = layer.upsample(x + s[4 - i])  # i=1 -> s3, i=2 -> s2, i=3 -> s1
        for blk in layer.blocks:
            x = blk(x)
    x = v.final_up(x).permute(0, 3, 1, 2)
    return F.conv2d(x, v.final_conv.weight, v.final_conv.bias)


def test_unet_wiring_matches_spec():
    v = tiny_vssm()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(v(x), spec_forward(v, x), rtol=0, atol=0)


def test_skip_s0_unused_and_skip_shapes():
    v = tiny_vssm()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        bottleneck, skips = v.forward_features(x)
        assert [tuple(s.shape) for s in skips] == [(1, 16, 16, 8), (1, 8, 8, 16), (1, 4, 4, 32), (1, 2, 2, 64)]
        assert tuple(bottleneck.shape) == (1, 2, 2, 64)
        ref = v.forward_features_up(bottleneck, skips)
        changed_s0 = v.forward_features_up(bottleneck, [torch.randn_like(skips[0])] + skips[1:])
        changed_s1 = v.forward_features_up(bottleneck, [skips[0], torch.randn_like(skips[1])] + skips[2:])
    assert torch.equal(ref, changed_s0)
    assert not torch.allclose(ref, changed_s1)


# --------------------------------------------------------------------------- init rules


def test_layernorm_eps_and_values(paper_model):
    norms = [m for m in paper_model.modules() if isinstance(m, nn.LayerNorm)]
    # 15 ln_1 + 15 out_norm + patch_embed + 3 downsample + 3 upsample + final_up
    assert len(norms) == 38
    for m in norms:
        assert m.eps == 1e-5
        assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_ss2d_parameter_init(paper_model):
    ss2ds = [m for m in paper_model.modules() if isinstance(m, SS2D)]
    assert len(ss2ds) == 15  # 15 SS2D calls per forward (3 + 4 + 4 + 4 blocks)
    expected_a = torch.log(torch.arange(1, 17, dtype=torch.float32))
    for m in ss2ds:
        D, R = m.d_inner, m.dt_rank
        assert R == math.ceil(m.d_model / 16) and D == 2 * m.d_model
        assert torch.equal(m.A_logs, expected_a.expand(4 * D, 16))
        assert torch.equal(m.Ds, torch.ones(4 * D))
        dt = F.softplus(m.dt_projs_bias.detach())
        assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
        assert m.dt_projs_weight.abs().max() <= R**-0.5
        # x_proj keeps nn.Linear's default U(+-1/sqrt(D)), untouched by the trunc-normal rule.
        assert m.x_proj_weight.abs().max() <= D**-0.5
        assert m.x_proj_weight.std() > 0.5 * D**-0.5 / math.sqrt(3)


def test_linear_and_conv_init(paper_model):
    linears = [m for m in paper_model.modules() if isinstance(m, nn.Linear)]
    # in_proj + out_proj per block, 3 reductions, 3 expands, final expand; none has a bias.
    assert len(linears) == 2 * 15 + 7
    assert all(m.bias is None for m in linears)
    big = paper_model.vmunet.layers[3].blocks[0].self_attention.in_proj.weight  # 3072 x 768
    assert abs(big.std().item() - 0.02) < 0.0005 and abs(big.mean().item()) < 0.0005
    # A Linear with a bias gets bias 0 from the same rule (VSSM._init_weights).
    lin = nn.Linear(4, 4)
    VSSM._init_weights(lin)
    assert torch.all(lin.bias == 0)
    # Convs keep PyTorch's default U(+-1/sqrt(fan_in)) (patch_embed fan_in = 3*4*4 = 48).
    w = paper_model.vmunet.patch_embed.proj.weight
    assert w.abs().max() <= 48**-0.5 and w.std() > 0.05  # U(+-0.144): std 0.083, not 0.02


def test_drop_path_schedule(paper_model):
    v = paper_model.vmunet
    enc = [blk.drop_path.drop_prob for layer in v.layers for blk in layer.blocks]
    dec = [blk.drop_path.drop_prob for layer in v.layers_up for blk in layer.blocks]
    assert enc == pytest.approx([0.2 * i / 7 for i in range(8)], abs=1e-7)  # linspace(0, 0.2, 8)
    assert dec == pytest.approx([0.2 * i / 6 for i in range(7)][::-1], abs=1e-7)  # reversed linspace(0, 0.2, 7)
    assert v.layers[0].blocks[1].drop_path.drop_prob == pytest.approx(0.0286, abs=1e-4)
    assert v.layers_up[0].blocks[1].drop_path.drop_prob == pytest.approx(0.167, abs=1e-3)
    assert v.layers_up[3].blocks[0].drop_path.drop_prob == 0.0
    assert all(isinstance(blk.drop_path, DropPath) for layer in v.layers for blk in layer.blocks)


def test_drop_path_behaviour():
    dp = DropPath(0.5)
    x = torch.ones(1000, 3)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 2.0) and 300 < kept.sum() < 700  # survivors scaled by 1/keep


# --------------------------------------------------------------------------- forward and errors


@pytest.mark.parametrize("num_classes", [1, 9])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_forward_shapes_small(size, num_classes):
    torch.manual_seed(0)
    model = VMUNet(num_classes=num_classes)
    x = torch.randn(2, 3, *size)
    y = model(x)  # train mode, with gradients
    assert y.shape == (2, num_classes, *size)
    y.float().mean().backward()
    assert model.vmunet.patch_embed.proj.weight.grad is not None


def test_gradient_checkpointing_matches():
    torch.manual_seed(0)
    plain = VMUNet(num_classes=2, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), drop_path_rate=0.0)
    ckpt = VMUNet(num_classes=2, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), drop_path_rate=0.0, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    plain(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("size,num_classes", [((224, 224), 9), ((256, 256), 1)])
def test_forward_shapes_paper_sizes(paper_model, size, num_classes):
    model = paper_model if num_classes == 1 else VMUNet(num_classes=9).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, num_classes, *size)
    assert torch.isfinite(y).all()


def test_returns_logits_not_probabilities(paper_model):
    with torch.no_grad():
        y = paper_model(torch.randn(2, 3, 64, 64) * 3)
    assert (y < 0).any()  # the official wrapper would return sigmoid(y) for one class


def test_one_channel_input_repeated(paper_model):
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(paper_model(x), paper_model(x.repeat(1, 3, 1, 1)))


def test_input_errors(paper_model):
    with pytest.raises(ValueError, match=r"divisible by 32.*height 65 is not.*64 or 96"):
        paper_model(torch.randn(1, 3, 65, 64))
    with pytest.raises(ValueError, match=r"divisible by 32.*width 80 is not"):
        paper_model(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"height 16 is not.*32"):
        paper_model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"built for 3 input channels.*got an input with 2 channels"):
        paper_model(torch.randn(1, 2, 64, 64))
    with pytest.raises(ValueError, match=r"4-D"):
        paper_model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"4-D"):
        paper_model(torch.randn(1, 1, 3, 64, 64))
    four = VMUNet(in_chans=4, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"built for 4 input channels, got an input with 1 channels"):
        four(torch.randn(1, 1, 64, 64))


def test_invalid_config():
    with pytest.raises(ValueError, match="same, non-zero length"):
        VMUNet(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="double the width"):
        VMUNet(dims=(96, 128, 384, 768))


# --------------------------------------------------------------------------- registry


def test_registry():
    assert "vmunet" in vmbench.list_models()
    info = vmbench.model_info("vmunet")
    assert info.family == "vmunet" and info.input_size == (256, 256)
    assert "2402.02491" in info.paper
    rows = {r.dataset: r for r in info.published}
    assert rows["isic2018"].metrics["miou"] == 81.35 and rows["isic2018"].metrics["dsc"] == 89.71
    assert rows["isic2017"].metrics["dsc"] == 89.03
    assert rows["synapse"].metrics["dsc"] == 81.08 and rows["synapse"].metrics["hd95"] == 19.21
    assert rows["synapse"].metrics["dsc_stomach"] == 81.40
    r = info.recipe
    assert r["optimizer"]["name"] == "AdamW" and r["optimizer"]["lr"] == 1e-3 and r["optimizer"]["weight_decay"] == 1e-2
    assert r["scheduler"]["eta_min"] == 1e-5 and r["epochs"] == 300 and r["batch_size"] == 32
    assert r["datasets"]["isic2018"]["T_max"] == 50 and r["datasets"]["synapse"]["T_max"] == 100
    assert r["datasets"]["synapse"]["input_size"] == (224, 224) and r["datasets"]["synapse"]["num_classes"] == 9


def test_create_model_with_overrides():
    model = vmbench.create_model("vmunet", num_classes=9, in_chans=3, drop_path_rate=0.0, depths=[1, 1, 1, 1])
    assert isinstance(model, VMUNet) and model.num_classes == 9
    assert [len(layer.blocks) for layer in model.vmunet.layers] == [1, 1, 1, 1]
    assert all(blk.drop_path.drop_prob == 0.0 for layer in model.vmunet.layers_up for blk in layer.blocks)
    assert n_params(vmbench.create_model("vmunet")) == 27_427_561
