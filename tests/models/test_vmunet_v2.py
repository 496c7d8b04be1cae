"""VM-UNetV2 (vmbench/models/vmunet_v2.py) against the official nobodyplayer1/VM-UNetV2@b65f04c1.

Expected numbers (parameter counts, the 8,948,834 parameters that never get a gradient, the key
list in tests/data/keys/vmunetv2_keys.txt) come from building the official code; the forward is
checked against a restatement of the official ``VMUNetV2.forward`` written here, which runs
every encoder stage and every head as the official does.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import vmbench
from vmbench.errors import ConfigError, ModelInputError
from vmbench.models.vmunet_v2 import EncoderLoadReport, VMUNetV2, VSSEncoder, load_pretrained_vmamba_encoder

UNUSED = 8_948_834  # vmunet.layers.3 + seg_outs.0/1 + deconv5 (official model, deep supervision on)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def model() -> VMUNetV2:
    torch.manual_seed(0)
    return VMUNetV2().eval()


def tiny(num_classes: int = 1, **kw) -> VMUNetV2:
    torch.manual_seed(1)
    return VMUNetV2(num_classes=num_classes, depths=(1, 1, 1, 1), **kw)


# --------------------------------------------------------------------------- sizes and keys


@pytest.mark.parametrize("num_classes, expected", [(1, 22_770_934), (2, 22_771_130), (9, 22_772_502)])
def test_parameter_counts(num_classes, expected):
    with torch.device("meta"):
        m = VMUNetV2(num_classes=num_classes)
    assert n_params(m) == expected
    assert m.deep_supervision == (num_classes == 1)


def test_state_dict_keys_and_shapes_in_order(official_keys):
    with torch.device("meta"):
        m = VMUNetV2()
    got = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert got == official_keys("vmunetv2_keys.txt")


# --------------------------------------------------------------------------- forward


def official_forward(m: VMUNetV2, x: torch.Tensor) -> torch.Tensor:
    """The official VMUNetV2.forward restated (logits: the final sigmoid left out)."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    enc = m.vmunet
    h = enc.pos_drop(enc.patch_embed(x))
    stage_inputs = []
    for layer in enc.layers:  # all four stages run; stage 3's output is dropped
        stage_inputs.append(h)
        h = layer(h)
    feats = []
    for i, f in enumerate(stage_inputs, start=1):
        f = f.permute(0, 3, 1, 2)
        ca = getattr(m, f"ca_{i}")
        mlp = lambda t: F.conv2d(F.relu(F.conv2d(t, ca.fc1.weight)), ca.fc2.weight)  # noqa: E731
        f = torch.sigmoid(mlp(F.adaptive_avg_pool2d(f, 1)) + mlp(F.adaptive_max_pool2d(f, 1))) * f
        sa = getattr(m, f"sa_{i}").conv1
        pooled = torch.cat([f.mean(1, keepdim=True), f.max(1, keepdim=True)[0]], 1)
        f = torch.sigmoid(F.conv2d(pooled, sa.weight, padding=3)) * f
        t = getattr(m, f"Translayer_{i}")
        feats.append(t.bn(F.conv2d(f, t.conv.weight)))

    def sdi(mod, anchor):
        ans, size = torch.ones_like(anchor), anchor.shape[-1]
        for i, f in enumerate(feats):
            if f.shape[-1] > size:
                f = F.adaptive_avg_pool2d(f, (size, size))
            elif f.shape[-1] < size:
                f = F.interpolate(f, size=(size, size), mode="bilinear", align_corners=True)
            ans = ans * mod.convs[i](f)
        return ans

    f41, f31, f21, f11 = (sdi(getattr(m, f"sdi_{i}"), feats[i - 1]) for i in (4, 3, 2, 1))
    seg = [m.seg_outs[0](f41)]
    y = m.deconv2(f41) + f31
    seg.append(m.seg_outs[1](y))
    y = m.deconv3(y) + f21
    seg.append(m.seg_outs[2](y))
    y = m.deconv4(y) + f11
    seg.append(m.seg_outs[3](y))
    seg = [F.interpolate(o, scale_factor=4, mode="bilinear") for o in seg]
    if m.deep_supervision:
        return seg[3] + m.deconv6(seg[2])
    return seg[3]


def test_forward_matches_official_restatement():
    m = tiny().eval()  # wiring does not depend on the block counts; one block per stage for speed
    assert m.deep_supervision
    gray = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(2))  # repeated to 3 by both
    with torch.no_grad():
        torch.testing.assert_close(m(gray), official_forward(m, gray), rtol=1e-4, atol=1e-5)


def test_forward_without_deep_supervision_matches_official():
    m = tiny(num_classes=2).eval()
    assert not m.deep_supervision
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        torch.testing.assert_close(out, official_forward(m, x), rtol=1e-4, atol=1e-5)
    assert out.shape == (1, 2, 32, 32)


def test_output_shapes():
    m = tiny().eval()  # the paper configuration's shapes, with one block per stage for speed
    with torch.no_grad():
        assert m(torch.randn(1, 3, 256, 256)).shape == (1, 1, 256, 256)
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 1, 32, 32)


def test_unused_parameters_get_no_gradient(model):
    model.zero_grad(set_to_none=True)
    model(torch.randn(1, 3, 32, 32)).square().mean().backward()  # eval mode: BatchNorm sees 1x1 maps
    named = dict(model.named_parameters())
    no_grad = {k for k, p in named.items() if p.grad is None}
    model.zero_grad(set_to_none=True)
    unused_prefixes = ("vmunet.layers.3.", "seg_outs.0.", "seg_outs.1.", "deconv5.")
    assert no_grad == {k for k in named if k.startswith(unused_prefixes)}
    assert sum(named[k].numel() for k in no_grad) == UNUSED


def test_training_output_is_one_tensor():
    """The official deep supervision fuses two heads into one map: one loss, no weights needed."""
    m = tiny().train()
    out = m(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 32, 32)
    assert getattr(m, "deep_supervision_weights", None) is None


def test_one_optimiser_step_lowers_the_loss():
    m = tiny(drop_path_rate=0.0).train()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    target = (torch.rand(2, 1, 32, 32, generator=gen) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=1e-2)  # one Adam step is a sign step: keep it small
    before = loss_fn(m(x), target)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(m(x), target)
    assert after.item() < before.item()


def test_input_errors(model):
    with pytest.raises(ModelInputError, match=r"VM-UNetV2 .*divisible by 32.*80x80.*64 or 96"):
        model(torch.randn(1, 3, 80, 80))
    with pytest.raises(ModelInputError, match=r"VM-UNetV2 .*square.*64x96"):
        model(torch.randn(1, 3, 64, 96))
    with pytest.raises(ModelInputError, match=r"VM-UNetV2 .*3 input channels \(or 1, repeated to 3\), got 2"):
        model(torch.randn(1, 2, 64, 64))
    with pytest.raises(ModelInputError, match=r"VM-UNetV2 .*\(batch, channels, height, width\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ModelInputError, match=r"VM-UNetV2 .*16x16.*32"):
        model(torch.randn(1, 3, 16, 16))


def test_config_errors():
    with pytest.raises(ConfigError, match=r"deep_supervision.*one output class only, not 9"):
        VMUNetV2(num_classes=9, deep_supervision=True, depths=(1, 1, 1, 1))
    with pytest.raises(ConfigError, match=r"4 encoder stages"):
        VMUNetV2(depths=(2, 2, 2))


def test_official_init(model):
    enc = model.vmunet
    w = enc.layers[1].blocks[0].self_attention.in_proj.weight
    assert abs(w.std().item() - 0.02) < 0.002  # encoder Linear: trunc-normal 0.02
    assert torch.equal(enc.layers[0].downsample.norm.weight, torch.ones(384))
    # Wrapper modules keep PyTorch's default init: conv weights U(+-1/sqrt(fan_in)), BN (1, 0).
    bound = 1 / math.sqrt(48 * 9)
    conv = model.sdi_2.convs[1].weight
    assert conv.abs().max().item() <= bound and conv.abs().max().item() > 0.9 * bound
    assert torch.equal(model.Translayer_3.bn.weight, torch.ones(48))
    # Stochastic depth: linspace(0, 0.2, 15) over the encoder blocks.
    rates = [b.drop_path.drop_prob for layer in enc.layers for b in layer.blocks]
    assert rates == pytest.approx([0.2 * i / 14 for i in range(15)])


# --------------------------------------------------------------------------- registry


def test_registry():
    info = vmbench.model_info("vmunet-v2")
    assert info.input_size == (256, 256) and "2403.09157" in info.paper
    assert info.load_pretrained is load_pretrained_vmamba_encoder
    r = info.recipe
    assert r["optimizer"]["lr"] == 1e-3 and r["optimizer"]["weight_decay"] == 1e-2
    assert (r["epochs"], r["batch_size"], r["scheduler"]["T_max"], r["scheduler"]["eta_min"]) == (300, 80, 50, 1e-5)
    m = vmbench.create_model("vmunet-v2", num_classes=2, depths=[1, 1, 1, 1])
    assert isinstance(m, VMUNetV2) and not m.deep_supervision


# --------------------------------------------------------------------------- VMamba-S initialisation


def vmamba_s_v0_shapes(depths=(2, 2, 27, 2)) -> "OrderedDict[str, tuple[int, ...]]":
    """VMamba-S v0 ImageNet state dict (classifier included): 446 tensors for depths [2,2,27,2]."""
    n = 16
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    shapes.update({"patch_embed.proj.weight": (96, 3, 4, 4), "patch_embed.proj.bias": (96,)})
    shapes.update({"patch_embed.norm.weight": (96,), "patch_embed.norm.bias": (96,)})
    for i, depth in enumerate(depths):
        c = 96 * 2**i
        d, r = 2 * c, math.ceil(c / 16)
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            shapes.update({p + "ln_1.weight": (c,), p + "ln_1.bias": (c,)})
            p += "self_attention."
            shapes.update({p + "x_proj_weight": (4, r + 2 * n, d), p + "dt_projs_weight": (4, d, r)})
            shapes.update({p + "dt_projs_bias": (4, d), p + "A_logs": (4 * d, n), p + "Ds": (4 * d,)})
            shapes.update({p + "in_proj.weight": (2 * d, c), p + "conv2d.weight": (d, 1, 3, 3), p + "conv2d.bias": (d,)})
            shapes.update({p + "out_norm.weight": (d,), p + "out_norm.bias": (d,), p + "out_proj.weight": (c, d)})
        if i < len(depths) - 1:
            p = f"layers.{i}.downsample."
            shapes.update({p + "reduction.weight": (2 * c, 4 * c), p + "norm.weight": (4 * c,), p + "norm.bias": (4 * c,)})
    shapes.update({"norm.weight": (768,), "norm.bias": (768,), "head.weight": (1000, 768), "head.bias": (1000,)})
    return shapes


@pytest.fixture(scope="module")
def vmamba_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(123)
    sd = OrderedDict((k, torch.randn(s, generator=gen)) for k, s in vmamba_s_v0_shapes().items())
    path = tmp_path_factory.mktemp("ckpt") / "vmamba_small_e238_ema.pth"
    torch.save({"model": sd}, path)
    return path, sd


def test_pretrained_loader_fills_the_encoder_only(model, vmamba_file):
    path, sd = vmamba_file
    assert len(sd) == 446
    m = copy.deepcopy(model)
    wrapper_before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("vmunet.")}
    report = vmbench.model_info("vmunet-v2").load_pretrained(m, str(path))
    assert isinstance(report, EncoderLoadReport)
    # Encoder tensors: patch_embed 4 + 13 per block x (2+2+9+2) + 3 per downsample x 3 = 208.
    expected_loaded = 4 + 13 * 15 + 3 * 3
    assert (report.model_keys, report.checkpoint_keys, len(report.loaded)) == (expected_loaded, 446, expected_loaded)
    assert report.not_loaded == [] and report.shape_mismatches == []
    # Skipped: VMamba-S layers.2 blocks 9..26 (18 x 13) and the classifier (norm, head).
    assert len(report.skipped) == 18 * 13 + 4
    assert "head.weight" in report.skipped and "layers.2.blocks.26.ln_1.weight" in report.skipped
    state = m.state_dict()
    for key in ("patch_embed.proj.weight", "layers.2.blocks.8.self_attention.A_logs", "layers.3.blocks.1.self_attention.Ds"):
        assert torch.equal(state[f"vmunet.{key}"], sd[key]), key
    for key, value in wrapper_before.items():  # skips, SDI, decoder and heads keep their init
        assert torch.equal(state[key], value), key
    assert "loaded 208" in report.summary()


def test_pretrained_loader_reports_shape_mismatch_and_takes_bare_dicts():
    torch.manual_seed(5)
    enc = VSSEncoder(depths=(1, 1, 1, 1))
    gen = torch.Generator().manual_seed(6)
    sd = {k: torch.randn(s, generator=gen) for k, s in vmamba_s_v0_shapes((1, 1, 1, 1)).items()}
    sd["layers.1.blocks.0.ln_1.weight"] = torch.zeros(191)
    report = load_pretrained_vmamba_encoder(enc, sd)  # a bare, already loaded state dict
    assert len(report.loaded) == 4 + 13 * 4 + 3 * 3 - 1
    assert report.shape_mismatches == ["layers.1.blocks.0.ln_1.weight: checkpoint (191,) vs model (192,)"]
    assert report.not_loaded == ["layers.1.blocks.0.ln_1.weight"]
    assert torch.equal(enc.layers[0].blocks[0].self_attention.x_proj_weight, sd["layers.0.blocks.0.self_attention.x_proj_weight"])
    with pytest.raises(TypeError, match="VMUNetV2"):
        load_pretrained_vmamba_encoder(torch.nn.Linear(2, 2), sd)


def test_pretrained_file_without_weights_is_a_clear_error(tmp_path):
    path = tmp_path / "not_weights.pth"
    torch.save({"epoch": 3}, path)
    from vmbench.checkpoints import CheckpointFormatError

    with pytest.raises(CheckpointFormatError, match=r"not_weights\.pth.*neither a state dict under 'model'"):
        load_pretrained_vmamba_encoder(VSSEncoder(depths=(1, 1, 1, 1)), path)
