"""VMamba-S v0 -> VM-UNet weight mapping (official VMUNet.load_from, models/vmunet/vmunet.py:34-76
at JCruan519/VM-UNet@43c495b) and official-checkpoint loading.

The VMamba-S v0 state dict is generated here from VMamba v0's structure (MzeroMiko/VMamba@0ec6c27
classification/models/vmamba/vmamba.py: depths [2,2,27,2], dims
96..768, d_state 16, expand 2, classifier norm + 1000-class head: 446 tensors) with random
values, saved once per module, and loaded through the public functions.
"""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict

import pytest
import torch

from vmbench.models.vmunet import (
    CheckpointFormatError,
    PretrainedLoadReport,
    VMUNet,
    load_pretrained_vmamba,
    load_vmunet_checkpoint,
)

N_STATE = 16


def block_shapes(C: int) -> dict[str, tuple[int, ...]]:
    D, R, N = 2 * C, math.ceil(C / 16), N_STATE
    return {
        "ln_1.weight": (C,),
        "ln_1.bias": (C,),
        "self_attention.x_proj_weight": (4, R + 2 * N, D),
        "self_attention.dt_projs_weight": (4, D, R),
        "self_attention.dt_projs_bias": (4, D),
        "self_attention.A_logs": (4 * D, N),
        "self_attention.Ds": (4 * D,),
        "self_attention.in_proj.weight": (2 * D, C),
        "self_attention.conv2d.weight": (D, 1, 3, 3),
        "self_attention.conv2d.bias": (D,),
        "self_attention.out_norm.weight": (D,),
        "self_attention.out_norm.bias": (D,),
        "self_attention.out_proj.weight": (C, D),
    }


def vmamba_s_v0_shapes() -> "OrderedDict[str, tuple[int, ...]]":
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    shapes["patch_embed.proj.weight"] = (96, 3, 4, 4)
    shapes["patch_embed.proj.bias"] = (96,)
    shapes["patch_embed.norm.weight"] = (96,)
    shapes["patch_embed.norm.bias"] = (96,)
    for i, (C, depth) in enumerate(zip((96, 192, 384, 768), (2, 2, 27, 2))):
        for j in range(depth):
            for name, shape in block_shapes(C).items():
                shapes[f"layers.{i}.blocks.{j}.{name}"] = shape
        if i < 3:
            shapes[f"layers.{i}.downsample.reduction.weight"] = (2 * C, 4 * C)
            shapes[f"layers.{i}.downsample.norm.weight"] = (4 * C,)
            shapes[f"layers.{i}.downsample.norm.bias"] = (4 * C,)
    shapes["norm.weight"] = (768,)
    shapes["norm.bias"] = (768,)
    shapes["head.weight"] = (1000, 768)
    shapes["head.bias"] = (1000,)
    return shapes


@pytest.fixture(scope="module")
def vmamba_sd() -> "OrderedDict[str, torch.Tensor]":
    gen = torch.Generator().manual_seed(123)
    return OrderedDict((k, torch.randn(s, generator=gen)) for k, s in vmamba_s_v0_shapes().items())


@pytest.fixture(scope="module")
def vmamba_file(vmamba_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "vmamba_small_e238_ema.pth"
    torch.save({"model": vmamba_sd}, path)
    return path


def fresh_model(num_classes: int = 1) -> VMUNet:
    torch.manual_seed(0)
    return VMUNet(num_classes=num_classes)


def test_generated_checkpoint_has_446_keys(vmamba_sd):
    assert len(vmamba_sd) == 446
    assert sum(v.numel() for v in vmamba_sd.values()) > 44_000_000  # VMamba-S v0: 44.42 M ("44M")


def test_load_counts_and_placement(vmamba_file, vmamba_sd):
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained_vmamba(model, vmamba_file)
    assert isinstance(report, PretrainedLoadReport)
    assert (report.encoder_loaded, report.decoder_loaded) == (117, 91)  # the official printout (#23)
    assert report.checkpoint_keys == 446 and report.model_keys == 222 and report.decoder_candidates == 438
    assert report.shape_mismatches == []

    sd = model.state_dict()
    # Encoder: same names.
    assert torch.equal(sd["vmunet.patch_embed.proj.weight"], vmamba_sd["patch_embed.proj.weight"])
    for name in ("self_attention.A_logs", "self_attention.in_proj.weight", "ln_1.bias"):
        assert torch.equal(sd[f"vmunet.layers.2.blocks.1.{name}"], vmamba_sd[f"layers.2.blocks.1.{name}"])
    assert torch.equal(sd["vmunet.layers.1.downsample.reduction.weight"], vmamba_sd["layers.1.downsample.reduction.weight"])
    # Decoder: layers.i -> layers_up.(3 - i), same width.
    pairs = {
        "layers_up.3.blocks.0": "layers.0.blocks.0",
        "layers_up.2.blocks.1": "layers.1.blocks.1",
        "layers_up.1.blocks.0": "layers.2.blocks.0",
        "layers_up.1.blocks.1": "layers.2.blocks.1",
        "layers_up.0.blocks.1": "layers.3.blocks.1",
    }
    for dst, src in pairs.items():
        for name in ("self_attention.A_logs", "self_attention.dt_projs_bias", "self_attention.out_proj.weight"):
            assert torch.equal(sd[f"vmunet.{dst}.{name}"], vmamba_sd[f"{src}.{name}"]), (dst, name)
    # Left at init: upsample, final_up, final_conv (9 + 3 + 2 tensors).
    untouched = [k for k in sd if ".upsample." in k or ".final_up." in k or ".final_conv." in k]
    assert len(untouched) == 14
    for k in untouched:
        assert torch.equal(sd[k], before[k]), k
    assert sorted(report.not_loaded) == sorted(k.removeprefix("vmunet.") for k in untouched)
    # Ignored checkpoint entries: surplus blocks of layers.2 and the classifier.
    assert "head.weight" in report.encoder_skipped and "layers.2.blocks.26.ln_1.weight" in report.encoder_skipped
    assert "layers_up.3.downsample.reduction.weight" in report.decoder_skipped


def test_accepts_inner_vssm_and_bare_state_dict(vmamba_sd, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(vmamba_sd, path)
    model = fresh_model()
    report = load_pretrained_vmamba(model.vmunet, path)
    assert (report.encoder_loaded, report.decoder_loaded) == (117, 91)
    model2 = fresh_model(num_classes=9)
    report2 = model2.load_from({"model": vmamba_sd})  # an already-loaded dict works too
    assert (report2.encoder_loaded, report2.decoder_loaded) == (117, 91)
    assert torch.equal(model.state_dict()["vmunet.layers_up.0.blocks.0.ln_1.weight"], model2.state_dict()["vmunet.layers_up.0.blocks.0.ln_1.weight"])


def test_shape_mismatch_is_skipped_and_reported(vmamba_sd):
    sd = OrderedDict(vmamba_sd)
    sd["layers.0.blocks.0.ln_1.weight"] = torch.zeros(95)
    report = load_pretrained_vmamba(fresh_model(), {"model": sd})
    # Pass 1 skips it for layers.0, pass 2 for its decoder copy layers_up.3.
    assert (report.encoder_loaded, report.decoder_loaded) == (116, 90)
    assert len(report.shape_mismatches) == 2
    assert "layers.0.blocks.0.ln_1.weight -> layers.0.blocks.0.ln_1.weight" in report.shape_mismatches[0]


def test_file_without_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "not_weights.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointFormatError, match=r"not_weights\.pth.*neither a state dict under 'model'"):
        load_pretrained_vmamba(fresh_model(), path)


def test_pickled_objects_are_refused_not_retried(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": {"patch_embed.proj.bias": torch.zeros(96)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointFormatError, match=r"with_args\.pth.*pickles Python objects.*weights_only"):
        load_pretrained_vmamba(fresh_model(), path)


def test_wrong_model_type():
    with pytest.raises(TypeError, match="VMUNet"):
        load_pretrained_vmamba(torch.nn.Linear(2, 2), {"model": {"a": torch.zeros(1)}})


def test_official_vmunet_checkpoint_roundtrip(tmp_path):
    src = fresh_model(num_classes=9)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = tmp_path / "best.pth"
    torch.save(src.state_dict(), path)  # the official best.pth: a bare, 'vmunet.'-prefixed state dict
    dst = VMUNet(num_classes=9)
    dst.load_state_dict(torch.load(path, weights_only=True), strict=True)
    loaded = dst.state_dict()
    for k, v in src.state_dict().items():
        assert torch.equal(loaded[k], v), k
    # The convenience loader also takes DataParallel ('module.') keys and a latest.pth-style dict.
    dp_path = tmp_path / "latest.pth"
    torch.save({"epoch": 10, "model_state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, dp_path)
    dst2 = VMUNet(num_classes=9)
    result = load_vmunet_checkpoint(dst2, dp_path)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(dst2.vmunet.final_conv.weight, src.vmunet.final_conv.weight)
    dst3 = VMUNet(num_classes=9)
    load_vmunet_checkpoint(dst3.vmunet, path)
    assert torch.equal(dst3.vmunet.layers[1].blocks[0].self_attention.Ds, src.vmunet.layers[1].blocks[0].self_attention.Ds)
