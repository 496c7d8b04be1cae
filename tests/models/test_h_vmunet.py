"""H-vmunet (vmbench/models/h_vmunet.py) against the official wurenkai/H-vmunet@f255cb44.

Expected numbers (parameter counts, the 16 unused ``complex_weight`` tensors of 403,392
parameters, the key list in tests/data/keys/h_vmunet_keys.txt) come from building the official
code. The forward is checked against a restatement of the official ``models/H_vmunet.py``
forward written here with plain tensor operations (the SS2D mixers, tested with VM-UNet, are
used as given).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import vmbench
from vmbench.errors import ConfigError, ModelInputError
from vmbench.models.h_vmunet import HSS2D, HVMUNet, LocalSS2D

UNUSED_COMPLEX_WEIGHT = 403_392


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def model() -> HVMUNet:
    torch.manual_seed(0)
    return HVMUNet().eval()


# --------------------------------------------------------------------------- sizes and keys


@pytest.mark.parametrize("num_classes, expected", [(1, 8_972_623), (2, 8_972_632), (9, 8_972_695)])
def test_parameter_counts(num_classes, expected):
    with torch.device("meta"):
        assert n_params(HVMUNet(num_classes=num_classes)) == expected


def test_state_dict_keys_and_shapes_in_order(official_keys):
    with torch.device("meta"):
        m = HVMUNet()
    got = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert got == official_keys("h_vmunet_keys.txt")
    complex_weights = [k for k in m.state_dict() if k.endswith("complex_weight")]
    assert len(complex_weights) == 16


# --------------------------------------------------------------------------- forward


def ln_channels_first(x, mod):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return mod.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + mod.bias[:, None, None]


def ss2d(mod, x):
    return mod(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def local_ss2d(mod, x):
    x = ln_channels_first(x, mod.pre_norm)
    x1, x2 = torch.chunk(x, 2, dim=1)
    x1 = F.conv2d(x1, mod.dw.weight, padding=1, groups=x1.shape[1])
    x2 = ss2d(mod.SS2D, x2)
    b, c, h, w = x1.shape
    x = torch.cat([x1.unsqueeze(2), x2.unsqueeze(2)], dim=2).reshape(b, 2 * c, h, w)
    return ln_channels_first(x, mod.post_norm)


def h_ss2d(mod, x):
    dims = [x.shape[1] // 2**i for i in range(mod.order)][::-1]
    fused = F.conv2d(x, mod.proj_in.weight, mod.proj_in.bias)
    pwa, abc = torch.split(fused, (dims[0], sum(dims)), dim=1)
    dw_list = torch.split(local_ss2d(mod.dwconv, abc) / 3, dims, dim=1)
    x = ss2d(mod.ss2d_in, pwa * dw_list[0])
    for i in range(mod.order - 1):
        pw = mod.pws[i]
        x = ss2d(getattr(mod, f"ss2d_{i + 1}"), F.conv2d(x, pw.weight, pw.bias) * dw_list[i + 1])
    return F.conv2d(x, mod.proj_out.weight, mod.proj_out.bias)


def block(mod, x):
    x = x + mod.gamma1.view(-1, 1, 1) * h_ss2d(mod.H_SS2D, ln_channels_first(x, mod.norm1))
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), mod.norm2.weight, mod.norm2.bias, 1e-6)
    y = F.linear(F.gelu(F.linear(y, mod.pwconv1.weight, mod.pwconv1.bias)), mod.pwconv2.weight, mod.pwconv2.bias)
    return x + (mod.gamma2 * y).permute(0, 3, 1, 2)


def stage(seq, x):
    for m in seq[:-1]:
        x = block(m, x)
    return F.conv2d(x, seq[-1].weight, seq[-1].bias, padding=1)


def bridge(scab, ts):
    conv = scab.satt.shared_conv2d[0]
    r = list(ts)
    sp = [
        torch.sigmoid(F.conv2d(torch.cat([t.mean(1, keepdim=True), t.max(1, keepdim=True)[0]], 1), conv.weight, conv.bias, padding=9, dilation=3))
        for t in ts
    ]
    ts = [a * t for a, t in zip(sp, ts)]
    r_ = list(ts)
    ts = [t + ri for t, ri in zip(ts, r)]
    att = torch.cat([F.adaptive_avg_pool2d(t, 1) for t in ts], dim=1)
    att = F.conv1d(att.squeeze(-1).transpose(-1, -2), scab.catt.get_all_att.weight, padding=1)
    out = []
    for i, t in enumerate(ts, start=1):
        fc = getattr(scab.catt, f"att{i}")
        a = torch.sigmoid(F.linear(att, fc.weight, fc.bias)).transpose(-1, -2).unsqueeze(-1).expand_as(t)
        out.append(a * t + r_[i - 1])
    return out


def official_forward(m: HVMUNet, x: torch.Tensor) -> torch.Tensor:
    """The official H_vmunet.forward restated (logits: the final sigmoid left out)."""

    def gn(name, t):
        g = getattr(m, name)
        return F.group_norm(t, 4, g.weight, g.bias, g.eps)

    def up(t):
        return F.interpolate(t, scale_factor=(2, 2), mode="bilinear", align_corners=True)

    conv1 = lambda seq, t: F.conv2d(t, seq[0].weight, seq[0].bias, padding=1)  # noqa: E731
    out = t1 = F.gelu(F.max_pool2d(gn("ebn1", conv1(m.encoder1, x)), 2, 2))
    out = t2 = F.gelu(F.max_pool2d(gn("ebn2", conv1(m.encoder2, out)), 2, 2))
    out = t3 = F.gelu(F.max_pool2d(gn("ebn3", stage(m.encoder3, out)), 2, 2))
    out = t4 = F.gelu(F.max_pool2d(gn("ebn4", stage(m.encoder4, out)), 2, 2))
    out = t5 = F.gelu(F.max_pool2d(gn("ebn5", stage(m.encoder5, out)), 2, 2))
    t1, t2, t3, t4, t5 = bridge(m.scab, (t1, t2, t3, t4, t5))
    out = F.gelu(stage(m.encoder6, out))
    out5 = F.gelu(gn("dbn1", stage(m.decoder1, out))) + t5
    out4 = F.gelu(up(gn("dbn2", stage(m.decoder2, out5)))) + t4
    out3 = F.gelu(up(gn("dbn3", stage(m.decoder3, out4)))) + t3
    out2 = F.gelu(up(gn("dbn4", stage(m.decoder4, out3)))) + t2
    out1 = F.gelu(up(gn("dbn5", conv1(m.decoder5, out2)))) + t1
    return up(F.conv2d(out1, m.final.weight, m.final.bias))


def perturbed(m: HVMUNet) -> HVMUNet:
    """Move layer scales and norms off their initial values so every branch shows in the output."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("gamma1", "gamma2")) or "norm" in name or "bn" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return m


def test_forward_matches_official_restatement(model):
    m = perturbed(copy.deepcopy(model))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = m(x)
        torch.testing.assert_close(out, official_forward(m, x), rtol=1e-4, atol=1e-5)
    assert out.abs().max() > 1e-3  # a live output, not a constant


def test_local_ss2d_interleaves_conv_and_scan_channels():
    torch.manual_seed(3)
    mod = LocalSS2D(24).eval()
    mod.pre_norm = mod.post_norm = torch.nn.Identity()  # expose the two branches
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        out = mod(x)
        torch.testing.assert_close(out[:, 0::2], mod.dw(x[:, :12]))
        torch.testing.assert_close(out[:, 1::2], ss2d(mod.SS2D, x[:, 12:]))


@pytest.mark.parametrize("size", [(256, 256), (64, 96)])
def test_output_shapes(model, size):
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1, *size)


def test_one_channel_input_is_repeated(model):
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.repeat(1, 3, 1, 1)))


def test_multiclass_output():
    torch.manual_seed(4)
    m = HVMUNet(num_classes=9, c_list=[4, 8, 16, 32, 64, 128]).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 9, 32, 32)


def test_complex_weights_get_no_gradient(model):
    model.zero_grad(set_to_none=True)
    model(torch.randn(1, 3, 32, 32)).square().mean().backward()
    named = dict(model.named_parameters())
    no_grad = {k for k, p in named.items() if p.grad is None}
    model.zero_grad(set_to_none=True)
    assert no_grad == {k for k in named if k.endswith(".complex_weight")}
    assert len(no_grad) == 16 and sum(named[k].numel() for k in no_grad) == UNUSED_COMPLEX_WEIGHT


def test_one_optimiser_step_lowers_the_loss(model):
    m = copy.deepcopy(model).train()
    for module in m.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0  # a deterministic step
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 32, 32, generator=gen)
    target = (torch.rand(1, 1, 32, 32, generator=gen) > 0.5).float()
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
    with pytest.raises(ModelInputError, match=r"H-vmunet .*divisible by 32.*80x64.*64 or 96"):
        model(torch.randn(1, 3, 80, 64))
    with pytest.raises(ModelInputError, match=r"H-vmunet .*3 input channels \(or 1, repeated to 3\), got 2"):
        model(torch.randn(1, 2, 64, 64))
    with pytest.raises(ModelInputError, match=r"H-vmunet .*\(batch, channels, height, width\)"):
        model(torch.randn(3, 64, 64))


def test_config_errors():
    with pytest.raises(ConfigError, match="c_list"):
        HVMUNet(c_list=[8, 16, 32, 64, 128])
    with pytest.raises(ConfigError, match="split_att"):
        HVMUNet(split_att="mlp")


# --------------------------------------------------------------------------- init and schedule


def test_official_init(model):
    # Conv2d: normal(0, sqrt(2 / (k*k*out/groups))), bias 0; here proj_in of decoder1 (1x1, 512 out).
    w = model.decoder1[0].H_SS2D.proj_in.weight
    assert abs(w.std().item() - math.sqrt(2 / 512)) < 0.1 * math.sqrt(2 / 512)
    assert torch.count_nonzero(model.decoder1[0].H_SS2D.proj_in.bias) == 0
    # SS2D's depth-wise conv too (fan_out = 9 * out / groups = 9), and its Linear projections.
    dw = model.decoder1[0].H_SS2D.ss2d_4.conv2d
    assert abs(dw.weight.std().item() - math.sqrt(2 / 9)) < 0.05 and torch.count_nonzero(dw.bias) == 0
    lin = model.decoder1[0].H_SS2D.ss2d_4.in_proj.weight
    assert abs(lin.std().item() - 0.02) < 0.002
    assert torch.equal(model.encoder3[0].gamma1, torch.full((16,), 1e-6))
    cw = model.decoder1[0].H_SS2D.dwconv.complex_weight
    assert abs(cw.std().item() - 0.02) < 0.002 and cw.abs().max().item() < 0.2


def test_drop_path_rates(model):
    rates = [i * 0.4 / 7 for i in range(8)]  # linspace(0, 0.4, 8)
    got = {name: [b.drop_path.drop_prob for b in getattr(model, name)[:2]] for name in ("encoder3", "encoder6", "decoder1", "decoder4")}
    assert got["encoder3"] == pytest.approx(rates[0:2]) and got["encoder6"] == pytest.approx(rates[6:8])
    assert got["decoder1"] == pytest.approx([rates[6], rates[6]])  # the official reuses rate 6 twice
    assert got["decoder4"] == pytest.approx(rates[0:2])


def test_hss2d_orders(model):
    orders = [getattr(model, f"encoder{i}")[0].H_SS2D.order for i in (3, 4, 5, 6)]
    assert orders == [2, 3, 4, 5] and model.decoder1[0].H_SS2D.order == 5
    with pytest.raises(ConfigError, match="order"):
        HSS2D(16, order=6)


# --------------------------------------------------------------------------- registry


def test_registry():
    info = vmbench.model_info("h-vmunet")
    assert info.input_size == (256, 256) and "2403.13642" in info.paper
    r = info.recipe
    assert r["optimizer"]["lr"] == 1e-3 and r["optimizer"]["weight_decay"] == 1e-2
    assert (r["epochs"], r["batch_size"], r["scheduler"]["T_max"], r["drop_path_rate"]) == (250, 8, 50, 0.4)
    assert isinstance(vmbench.create_model("h-vmunet", num_classes=2), HVMUNet)
