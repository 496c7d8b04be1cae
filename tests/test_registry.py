"""The model registry's pretrained hook: ``model_info(name).load_pretrained(model, path)``.

Each family with published pretrained weights registers its loader; building a model never reads a
file (TransFuse-S used to read its two ImageNet files in the constructor); a family without such
weights has ``load_pretrained is None``.
"""

from __future__ import annotations

import builtins
import inspect
import io

import pytest
import torch

import vmbench
import vmbench.registry as registry
from baselines.swin_unet import SwinUnet, load_swin_pretrained
from baselines.transfuse import TransFuseS, load_transfuse_pretrained
from vmbench.errors import ConfigError
from vmbench.models.vmunet import VMUNet, load_pretrained_vmamba


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_vmunet(seed: int) -> VMUNet:
    torch.manual_seed(seed)
    return VMUNet(depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), dims=8)


def tiny_swin(seed: int) -> SwinUnet:
    torch.manual_seed(seed)
    return SwinUnet(num_classes=1, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def tiny_transfuse(seed: int) -> TransFuseS:
    torch.manual_seed(seed)
    return TransFuseS(img_size=(32, 32), depth=1, resnet_layers=(1, 1, 1))


# (model name, its loader, a tiny model of the family, the file the loader takes, a tensor the
# loader must copy: (name in the loaded model, name in the source model)).
CASES = {
    # A VMamba v0 checkpoint keeps its state dict under "model"; encoder layer 0 also seeds
    # decoder stage 3 (the official load_from's renaming).
    "vmunet": (
        load_pretrained_vmamba,
        tiny_vmunet,
        lambda src: {"model": {k.removeprefix("vmunet."): v for k, v in src.state_dict().items()
                               if k.startswith(("vmunet.patch_embed.", "vmunet.layers."))}},
        (
            "vmunet.layers_up.3.blocks.0.self_attention.in_proj.weight",
            "vmunet.layers.0.blocks.0.self_attention.in_proj.weight",
        ),
    ),
    # A Swin ImageNet checkpoint keeps its state dict under "model".
    "swin-unet": (
        load_swin_pretrained,
        tiny_swin,
        lambda src: {"model": {k.removeprefix("swin_unet."): v for k, v in src.state_dict().items()}},
        ("swin_unet.layers.1.blocks.0.attn.qkv.weight", "swin_unet.layers.1.blocks.0.attn.qkv.weight"),
    ),
    # A file (not a folder) is a trained TransFuse-S checkpoint.
    "transfuse-s": (
        load_transfuse_pretrained,
        tiny_transfuse,
        lambda src: src.state_dict(),
        ("up_c_2_2.attn_block.psi.0.weight", "up_c_2_2.attn_block.psi.0.weight"),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pretrained_loader_is_reachable_through_the_registry(name, tmp_path):
    loader, build, checkpoint, (dst_key, src_key) = CASES[name]
    info = vmbench.model_info(name)
    assert info.load_pretrained is loader
    source, target = build(1), build(2)
    assert not torch.equal(target.state_dict()[dst_key], source.state_dict()[src_key])
    path = tmp_path / "weights.pth"
    torch.save(checkpoint(source), path)
    report = info.load_pretrained(target, str(path))  # a string, as model.pretrained gives it
    assert torch.equal(target.state_dict()[dst_key], source.state_dict()[src_key])
    assert str(path) in str(report)  # the report's str (what gets logged) names the file


@pytest.mark.parametrize("name", ["unet", "unet-classic", "att-unet"])
def test_models_without_published_weights_have_no_loader(name):
    assert vmbench.model_info(name).load_pretrained is None


def test_register_model_passes_the_hook_and_defaults_to_none(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", registry.Registry("model", None, ()))

    def loader(model, path):
        return f"loaded {path}"

    def factory(num_classes=1, in_chans=3):
        return torch.nn.Conv2d(in_chans, num_classes, 1)

    meta = dict(family="test", paper="none", input_size=(8, 8))
    registry.register_model("with-loader", load_pretrained=loader, **meta)(factory)
    registry.register_model("without-loader", **meta)(factory)
    assert registry.model_info("with-loader").load_pretrained is loader
    assert registry.model_info("without-loader").load_pretrained is None
    assert registry.create_model("without-loader", num_classes=2).out_channels == 2
    with pytest.raises(TypeError, match="load_pretrained must be callable"):
        registry.register_model("bad", load_pretrained="weights.pth", **meta)


def _refuse(*args, **kwargs):
    raise AssertionError(f"a file was read while building the model: {args[:1]}")


def test_building_transfuse_never_reads_a_file(monkeypatch):
    for owner, attr in ((torch, "load"), (builtins, "open"), (io, "open")):
        monkeypatch.setattr(owner, attr, _refuse)
    factory = vmbench.model_info("transfuse-s").factory
    assert not [p for p in inspect.signature(factory).parameters if p.endswith("_weights")]
    model = vmbench.create_model("transfuse-s")  # the native 192x256 TransFuse-S
    assert model.pretrained_reports == {}
    # The weight-file options the constructor used to take are a one-line error, not a read.
    for old in ("resnet_weights", "deit_weights"):
        with pytest.raises(ConfigError, match=rf"model\.overrides\.{old}.*model\.pretrained"):
            vmbench.create_model("transfuse-s", **{old: "pretrained/weights.pth"})


def test_dataset_options_come_from_the_registration():
    from vmbench.registry import dataset_options

    def plain(root, split, protocol, img_size, augment, seed, *, n=1, fold=None, folds=5):
        return None

    def forwarding(root, split, protocol, img_size, augment, seed, *, data_seed=0, **kwargs):
        return None

    # fold/folds are the engine's, not the user's; the rest are the builder's keyword parameters.
    assert dataset_options("plain", plain, None) == ("n",)
    assert dataset_options("fwd", forwarding, ("normalize",)) == ("data_seed", "normalize")
    with pytest.raises(TypeError, match=r"dataset 'fwd': its builder takes \*\*kwargs; declare"):
        dataset_options("fwd", forwarding, None)
    # The registered stand-in accepts its own options and the loader's it forwards, nothing else.
    options = vmbench.dataset_info("synthetic-isic").options
    assert {"n", "data_seed", "layout", "normalize", "augmentation"} <= set(options)
    assert not {"fold", "folds", "name", "root"} & set(options)


def test_an_unknown_data_option_names_the_accepted_ones():
    from vmbench.data import build_dataset
    from vmbench.errors import DataError

    with pytest.raises(DataError, match=r"data.options: 'nromalize' is not an option of dataset 'synapse' \(accepted: val_cases, class_names\)"):
        build_dataset("synapse", root="never-read", nromalize="zscore")
