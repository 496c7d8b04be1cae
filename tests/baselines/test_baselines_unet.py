"""UNet / Attention U-Net baselines: counts, state_dict keys, forward, errors, gate, registry.

Expected numbers (counted by instantiating the reference code on CPU) and key layouts are written
out here from the reference code's structure (milesial/Pytorch-UNet, LeeJunHyun/Image_Segmentation ``network.py``),
never read back from the models under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import baselines.att_unet  # noqa: F401  (registers "att-unet")
import baselines.unet  # noqa: F401  (registers "unet", "unet-classic")
import vmbench
from baselines.att_unet import AttentionBlock, AttUNet
from baselines.unet import UNet, UNetClassic
from vmbench.registry import model_info

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("unet", "unet-classic", "att-unet")

# Counted on the reference code, 3 input channels: the width-32 milesial layout ("7.77M" in
# MALUNet/VM-UNet Table I), LeeJunHyun U_Net and AttU_Net (network.py @5e9da93).
PARAM_COUNTS = {
    ("unet", 1): 7_765_985,
    ("unet", 9): 7_766_249,
    ("unet-classic", 1): 34_527_041,
    ("unet-classic", 9): 34_527_561,
    ("att-unet", 1): 34_878_573,
    ("att-unet", 9): 34_879_093,
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Expected state_dict layouts, from the reference structure rules.
# --------------------------------------------------------------------------------------------


def _conv(prefix, c_out, c_in, k, bias=True):
    keys = [(f"{prefix}.weight", (c_out, c_in, k, k))]
    if bias:
        keys.append((f"{prefix}.bias", (c_out,)))
    return keys


def _bn(prefix, c):
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def _double(prefix, c_in, c_out, bias=True):
    # (3x3 conv -> BN -> ReLU) x 2 in one Sequential: indices 0/3 conv, 1/4 BN.
    return _conv(f"{prefix}.0", c_out, c_in, 3, bias) + _bn(f"{prefix}.1", c_out) + _conv(
        f"{prefix}.3", c_out, c_out, 3, bias
    ) + _bn(f"{prefix}.4", c_out)


def milesial_keys(in_chans, num_classes, width=32, bias=True):
    """milesial UNet(bilinear=False): inc, down1-4 (maxpool_conv.1), up1-4 (up + conv), outc."""
    c = [width, 2 * width, 4 * width, 8 * width, 16 * width]
    keys = _double("inc.double_conv", in_chans, c[0], bias)
    for i in range(1, 5):
        keys += _double(f"down{i}.maxpool_conv.1.double_conv", c[i - 1], c[i], bias)
    for i, (hi, lo) in enumerate([(c[4], c[3]), (c[3], c[2]), (c[2], c[1]), (c[1], c[0])], start=1):
        # ConvTranspose2d(hi, hi // 2, 2, stride 2): weight is (in, out, kH, kW).
        keys += [(f"up{i}.up.weight", (hi, hi // 2, 2, 2)), (f"up{i}.up.bias", (hi // 2,))]
        keys += _double(f"up{i}.conv.double_conv", hi, lo, bias)
    keys += _conv("outc.conv", num_classes, c[0], 1)
    return keys


def leejunhyun_keys(in_chans, num_classes, attention):
    """LeeJunHyun U_Net / AttU_Net, in module registration order."""
    c = [64, 128, 256, 512, 1024]
    keys = _double("Conv1.conv", in_chans, c[0])
    for i in range(2, 6):
        keys += _double(f"Conv{i}.conv", c[i - 2], c[i - 1])
    for level in (5, 4, 3, 2):
        hi, lo = c[level - 1], c[level - 2]
        # up_conv: Sequential(Upsample, Conv3x3, BN, ReLU) -> indices 1 (conv), 2 (BN).
        keys += _conv(f"Up{level}.up.1", lo, hi, 3) + _bn(f"Up{level}.up.2", lo)
        if attention:  # Attention_block(F_g=lo, F_l=lo, F_int=lo // 2)
            a = f"Att{level}"
            keys += _conv(f"{a}.W_g.0", lo // 2, lo, 1) + _bn(f"{a}.W_g.1", lo // 2)
            keys += _conv(f"{a}.W_x.0", lo // 2, lo, 1) + _bn(f"{a}.W_x.1", lo // 2)
            keys += _conv(f"{a}.psi.0", 1, lo // 2, 1) + _bn(f"{a}.psi.1", 1)
        keys += _double(f"Up_conv{level}.conv", hi, lo)
    keys += _conv("Conv_1x1", num_classes, c[0], 1)
    return keys


EXPECTED_KEYS = {
    "unet": lambda nc: milesial_keys(3, nc),
    "unet-classic": lambda nc: leejunhyun_keys(3, nc, attention=False),
    "att-unet": lambda nc: leejunhyun_keys(3, nc, attention=True),
}


@pytest.fixture(scope="module")
def built():
    """One instance per (model, num_classes), shared across tests to keep the file fast."""
    cache = {}

    def get(name, num_classes=1):
        if (name, num_classes) not in cache:
            torch.manual_seed(0)
            cache[(name, num_classes)] = vmbench.create_model(name, num_classes=num_classes)
        return cache[(name, num_classes)]

    return get


@pytest.mark.parametrize("name,num_classes", list(PARAM_COUNTS))
def test_parameter_counts(built, name, num_classes):
    assert n_params(built(name, num_classes)) == PARAM_COUNTS[(name, num_classes)]


def test_unet_variant_counts():
    assert n_params(UNet(conv_bias=False)) == 7_763_041  # later milesial code, no conv bias
    assert n_params(UNet(base_channels=64)) == 31_043_521  # "31.04M": the same layout at width 64


@pytest.mark.parametrize("name,num_classes", list(PARAM_COUNTS))
def test_state_dict_keys_and_shapes(built, name, num_classes):
    expected = [(k, tuple(s)) for k, s in EXPECTED_KEYS[name](num_classes)]
    got = [(k, tuple(v.shape)) for k, v in built(name, num_classes).state_dict().items()]
    assert got == expected
    # The expected layout also sums to the counted parameter total (buffers excluded).
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    total = sum(torch.Size(s).numel() for k, s in expected if not k.endswith(buffers))
    assert total == PARAM_COUNTS[(name, num_classes)]


def test_unet_no_bias_keys():
    expected = [(k, tuple(s)) for k, s in milesial_keys(3, 1, bias=False)]
    assert [(k, tuple(v.shape)) for k, v in UNet(conv_bias=False).state_dict().items()] == expected


@pytest.mark.parametrize("name", MODELS)
def test_reference_layout_checkpoint_loads_strict(built, name):
    """A checkpoint laid out as the reference code's loads with strict=True and is used."""
    torch.manual_seed(1)
    state = {}
    for key, shape in EXPECTED_KEYS[name](1):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        else:
            state[key] = torch.randn(shape) * 0.01
    model = vmbench.create_model(name)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# --------------------------------------------------------------------------------------------
# Forward pass: shapes, logits, input rules.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_forward_native_size(built, name):
    model = built(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 1, 256, 256)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 32, 64), (1, 3, 48, 16)])
def test_forward_small_sizes(built, name, shape):
    model = built(name, 9).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 9, shape[2], shape[3])


@pytest.mark.parametrize("name", MODELS)
def test_returns_logits_not_probabilities(built, name):
    model = built(name).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32) * 50)
    # The 1x1 head has no activation: values are unbounded (a sigmoid would clamp to [0, 1]).
    assert (out < 0).any() or (out > 1).any()


@pytest.mark.parametrize("name", MODELS)
def test_grey_input_repeated_to_three_channels(built, name):
    model = built(name).eval()
    grey = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.allclose(model(grey), model(grey.repeat(1, 3, 1, 1)), atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("hw", [(30, 32), (32, 40), (8, 8), (256, 250)])
def test_size_not_divisible_by_16_is_a_clear_error(built, name, hw):
    with pytest.raises(ValueError) as err:
        built(name)(torch.randn(1, 3, *hw))
    message = str(err.value)
    assert f"{hw[0]}x{hw[1]}" in message and "divisible by 16" in message


@pytest.mark.parametrize("name", MODELS)
def test_wrong_channels_and_rank_are_clear_errors(built, name):
    model = built(name)
    with pytest.raises(ValueError, match=r"3 input channels.*got an input with 2 channels"):
        model(torch.randn(1, 2, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 32, 32))
    one = vmbench.create_model(name, in_chans=1, num_classes=2).eval()
    with pytest.raises(ValueError, match=r"built for 1 input channels, got an input with 3"):
        one(torch.randn(1, 3, 16, 16))
    assert one(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        UNet(num_classes=0)
    with pytest.raises(ValueError, match="in_chans"):
        AttUNet(in_chans=0)
    with pytest.raises(TypeError):
        vmbench.create_model("unet-classic", conv_bias=False)  # unet-only override


# --------------------------------------------------------------------------------------------
# Same forward as the reference: an independent functional computation on tiny widths.
# --------------------------------------------------------------------------------------------


def _bn_eval(x, sd, p):
    mean, var = sd[p + ".running_mean"], sd[p + ".running_var"]
    return F.batch_norm(x, mean, var, sd[p + ".weight"], sd[p + ".bias"], training=False, eps=1e-5)


def _dconv(x, sd, p):
    for conv, bn in ((0, 1), (3, 4)):
        x = F.conv2d(x, sd[f"{p}.{conv}.weight"], sd.get(f"{p}.{conv}.bias"), padding=1)
        x = F.relu(_bn_eval(x, sd, f"{p}.{bn}"))
    return x


def _gate_reference(g, x, sd, p):
    a = _bn_eval(F.conv2d(g, sd[p + ".W_g.0.weight"], sd[p + ".W_g.0.bias"]), sd, p + ".W_g.1")
    b = _bn_eval(F.conv2d(x, sd[p + ".W_x.0.weight"], sd[p + ".W_x.0.bias"]), sd, p + ".W_x.1")
    psi = _bn_eval(F.conv2d(F.relu(a + b), sd[p + ".psi.0.weight"], sd[p + ".psi.0.bias"]), sd, p + ".psi.1")
    return x * torch.sigmoid(psi)


def _milesial_forward(x, sd):
    skips = [_dconv(x, sd, "inc.double_conv")]
    for i in range(1, 5):
        skips.append(_dconv(F.max_pool2d(skips[-1], 2), sd, f"down{i}.maxpool_conv.1.double_conv"))
    d = skips.pop()
    for i in range(1, 5):
        up = F.conv_transpose2d(d, sd[f"up{i}.up.weight"], sd[f"up{i}.up.bias"], stride=2)
        d = _dconv(torch.cat([skips.pop(), up], 1), sd, f"up{i}.conv.double_conv")
    return F.conv2d(d, sd["outc.conv.weight"], sd["outc.conv.bias"])


def _leejunhyun_forward(x, sd, attention):
    skips = [_dconv(x, sd, "Conv1.conv")]
    for i in range(2, 6):
        skips.append(_dconv(F.max_pool2d(skips[-1], 2, 2), sd, f"Conv{i}.conv"))
    d = skips.pop()
    for level in (5, 4, 3, 2):
        up = F.interpolate(d, scale_factor=2, mode="nearest")
        up = F.relu(_bn_eval(F.conv2d(up, sd[f"Up{level}.up.1.weight"], sd[f"Up{level}.up.1.bias"], padding=1),
                             sd, f"Up{level}.up.2"))
        skip = skips.pop()
        if attention:
            skip = _gate_reference(up, skip, sd, f"Att{level}")
        d = _dconv(torch.cat((skip, up), 1), sd, f"Up_conv{level}.conv")
    return F.conv2d(d, sd["Conv_1x1.weight"], sd["Conv_1x1.bias"])


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.1)


@pytest.mark.parametrize(
    "model,reference",
    [
        (lambda: UNet(num_classes=2, base_channels=4), _milesial_forward),
        (lambda: UNet(num_classes=2, base_channels=4, conv_bias=False), _milesial_forward),
        (lambda: UNetClassic(num_classes=2, base_channels=4), lambda x, sd: _leejunhyun_forward(x, sd, False)),
        (lambda: AttUNet(num_classes=2, base_channels=4), lambda x, sd: _leejunhyun_forward(x, sd, True)),
    ],
    ids=["unet", "unet-nobias", "unet-classic", "att-unet"],
)
def test_forward_matches_functional_reference(model, reference):
    torch.manual_seed(3)
    net = model()
    _randomise_bn(net)
    net.eval()
    x = torch.randn(2, 3, 32, 48)
    sd = net.state_dict()
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x, sd), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# The attention gate on a tiny example, computed by hand.
# --------------------------------------------------------------------------------------------


def test_attention_gate_tiny_by_hand():
    """F_g = 2, F_l = 3, F_int = 2 on a 2x2 map, BN in eval with chosen statistics."""
    torch.manual_seed(4)
    gate = AttentionBlock(F_g=2, F_l=3, F_int=2)
    wg, bg = torch.randn(2, 2), torch.randn(2)
    wx, bx = torch.randn(2, 3), torch.randn(2)
    wp, bp = torch.randn(1, 2), torch.randn(1)
    t = torch.tensor
    bn = {  # name: (mean, var, gamma, beta)
        "W_g.1": (t([0.1, -0.2]), t([1.5, 0.5]), t([0.9, 1.1]), t([0.0, 0.3])),
        "W_x.1": (t([-0.3, 0.2]), t([0.8, 2.0]), t([1.2, 0.7]), t([0.1, -0.1])),
        "psi.1": (t([0.05]), t([1.3]), t([0.8]), t([0.2])),
    }
    with torch.no_grad():
        gate.W_g[0].weight.copy_(wg.view(2, 2, 1, 1)), gate.W_g[0].bias.copy_(bg)
        gate.W_x[0].weight.copy_(wx.view(2, 3, 1, 1)), gate.W_x[0].bias.copy_(bx)
        gate.psi[0].weight.copy_(wp.view(1, 2, 1, 1)), gate.psi[0].bias.copy_(bp)
        for name, (mean, var, gamma, beta) in bn.items():
            layer = gate.get_submodule(name)
            layer.running_mean.copy_(mean), layer.running_var.copy_(var)
            layer.weight.copy_(gamma), layer.bias.copy_(beta)
    gate.eval()
    g = torch.randn(1, 2, 2, 2)
    x = torch.randn(1, 3, 2, 2)

    def norm(v, name):  # per-channel eval BN on a vector of channels
        mean, var, gamma, beta = bn[name]
        return (v - mean) / torch.sqrt(var + 1e-5) * gamma + beta

    expected = torch.empty_like(x)
    alphas = torch.empty(2, 2)
    for i in range(2):
        for j in range(2):
            gv, xv = g[0, :, i, j], x[0, :, i, j]
            q = torch.clamp(norm(wg @ gv + bg, "W_g.1") + norm(wx @ xv + bx, "W_x.1"), min=0)
            alpha = torch.sigmoid(norm(wp @ q + bp, "psi.1"))[0]
            alphas[i, j] = alpha
            expected[0, :, i, j] = xv * alpha
    with torch.no_grad():
        out = gate(g, x)
        coeff = gate.attention(g, x)
    assert out.shape == x.shape and coeff.shape == (1, 1, 2, 2)
    assert torch.allclose(coeff[0, 0], alphas, atol=1e-6)
    assert torch.allclose(out, expected, atol=1e-6)
    g_before = g.clone()
    gate(g, x)
    assert torch.equal(g, g_before)  # the in-place ReLU never touches the inputs
    with pytest.raises(ValueError, match="same resolution"):
        gate(torch.randn(1, 2, 1, 1), x)  # no resampling: g must already be at x's resolution


# --------------------------------------------------------------------------------------------
# One optimisation step lowers the loss.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_one_adam_step_lowers_bce(name):
    torch.manual_seed(5)
    model = vmbench.create_model(name).train()
    x = torch.randn(2, 3, 32, 32)
    y = (torch.rand(2, 1, 32, 32) > 0.5).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss0 = F.binary_cross_entropy_with_logits(model(x), y)
    opt.zero_grad()
    loss0.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    loss1 = F.binary_cross_entropy_with_logits(model(x), y)
    assert loss1.item() < loss0.item()


# --------------------------------------------------------------------------------------------
# Registry metadata and search spaces.
# --------------------------------------------------------------------------------------------


def test_registry_metadata():
    assert {"unet", "unet-classic", "att-unet"} <= set(vmbench.list_models())
    for name, family in (("unet", "unet"), ("unet-classic", "unet"), ("att-unet", "att-unet")):
        info = model_info(name)
        assert info.family == family and info.input_size == (256, 256) and info.paper
        for key in ("optimizer", "scheduler", "epochs", "batch_size", "loss", "input_size"):
            assert key in info.recipe, (name, key)
        assert info.recipe["optimizer"]["lr"] == 1e-3 and info.recipe["optimizer"]["weight_decay"] == 1e-2

    rows = {(r.dataset, r.protocol): r for r in model_info("unet").published}
    assert set(rows) == {("isic2017", "paper"), ("isic2018", "paper"), ("synapse", "paper")}
    isic17 = {"miou": 76.98, "dsc": 86.99, "acc": 95.65, "spe": 97.43, "sen": 86.82}
    isic18 = {"miou": 77.86, "dsc": 87.55, "acc": 94.05, "spe": 96.69, "sen": 85.86}
    assert rows[("isic2017", "paper")].metrics == isic17
    assert rows[("isic2018", "paper")].metrics == isic18
    assert "unverified" in rows[("isic2018", "paper")].source
    syn = rows[("synapse", "paper")].metrics
    assert (syn["dsc"], syn["hd95"]) == (76.85, 39.70)
    organs = ["aorta", "gallbladder", "kidney_l", "kidney_r", "liver", "pancreas", "spleen", "stomach"]
    assert [syn[f"dsc_{o}"] for o in organs] == [89.07, 69.72, 77.77, 68.60, 93.43, 53.98, 86.67, 75.58]

    rows = {r.dataset: r for r in model_info("att-unet").published}
    assert set(rows) == {"isic2018", "synapse"}  # no ISIC17 Att-UNet row in VM-UNet Table I
    assert rows["isic2018"].metrics == {"miou": 78.43, "dsc": 87.91, "acc": 94.13, "spe": 96.23, "sen": 87.60}
    assert "unverified" in rows["isic2018"].source
    syn = rows["synapse"].metrics
    assert (syn["dsc"], syn["hd95"]) == (77.77, 36.02)
    assert [syn[f"dsc_{o}"] for o in organs] == [89.55, 68.88, 77.98, 71.11, 93.57, 58.04, 87.30, 75.75]
    assert model_info("unet-classic").published == ()


@pytest.mark.parametrize("filename,model", [("unet.yaml", "unet"), ("att_unet.yaml", "att-unet")])
def test_search_space_files(filename, model):
    from vmbench.search_space import load_spec

    spec = load_spec(ROOT / "search_spaces" / filename)
    (study,) = spec.studies
    assert study.model == model and study.dataset == "isic2018"
    base, info = study.base, model_info(model).recipe
    assert base.optim.lr == info["optimizer"]["lr"] and base.optim.weight_decay == info["optimizer"]["weight_decay"]
    assert base.train.batch_size == info["batch_size"] and spec.budget.max_epochs == info["epochs"]
    assert (base.data.img_size,) * 2 == tuple(info["input_size"])
    assert base.scheduler.t_max == info["datasets"]["isic2018"]["T_max"]
    assert {"optim.lr", "optim.weight_decay", "train.batch_size", "loss.dice_weight"} <= {p.key for p in study.space}
    assert study.start_point["optim.lr"] == info["optimizer"]["lr"]
