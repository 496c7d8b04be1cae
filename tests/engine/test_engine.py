"""The single-trial engine: training, selection, exact resume, evaluation outputs, CLI round trip."""

from __future__ import annotations

import ast
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vmbench.cli import main
from vmbench.config import ExperimentConfig
from vmbench.data import synth_isic, synth_synapse
from vmbench.engine import fit, load_checkpoint, selection_rule
from vmbench.errors import TrainingDivergedError
from vmbench.errors import BackendUnavailableError, CheckpointError, ConfigError

TINY_VMUNET = {"dims": [8, 16, 32, 64], "d_state": 4}


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic")
    synth_isic(root, n=30, seed=1, layout="challenge", year=2018)
    return root


def tiny_config(root, **sections) -> ExperimentConfig:
    values = {
        "data": {"name": "synthetic-isic", "root": str(root), "img_size": 32},
        "model": {"name": "vmunet", "overrides": dict(TINY_VMUNET)},
        "train": {"epochs": 2, "batch_size": 8, "progress": False, "seed": 3},
    }
    for name, extra in sections.items():
        values.setdefault(name, {}).update(extra)
    return ExperimentConfig.from_dict(values)


def test_resume_equals_uninterrupted_training(isic_root, tmp_path):
    straight = fit(tiny_config(isic_root, train={"epochs": 4}), tmp_path / "straight", evaluate_test=False)

    class Crash(Exception):
        pass

    def crash_after_two(result):
        if result.epoch == 2:
            raise Crash

    interrupted_cfg = tiny_config(isic_root, train={"epochs": 4})
    with pytest.raises(Crash):
        fit(interrupted_cfg, tmp_path / "resumed", callbacks=[crash_after_two], evaluate_test=False)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = fit(interrupted_cfg, tmp_path / "resumed", resume=True, evaluate_test=False)

    a = load_checkpoint(straight.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert a["epoch"] == b["epoch"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert straight.best_epoch == resumed.best_epoch


def test_resume_refuses_a_different_config(isic_root, tmp_path):
    fit(tiny_config(isic_root, train={"epochs": 1}), tmp_path, evaluate_test=False)
    with pytest.raises(ValueError, match="different configuration") as refused:
        fit(tiny_config(isic_root, train={"epochs": 1}, optim={"lr": 0.5}), tmp_path, resume=True, evaluate_test=False)
    # The message names what changed, dotted, old -> new (and nothing that did not).
    assert "optim.lr: 0.001 -> 0.5" in str(refused.value) and "train.epochs" not in str(refused.value)
    assert isinstance(refused.value, ConfigError)


def test_fit_writes_checkpoints_and_test_tables(isic_root, tmp_path):
    seen = []
    result = fit(tiny_config(isic_root), tmp_path, callbacks=[seen.append])
    assert [r.epoch for r in seen] == [1, 2]
    assert all({"train_loss", "val_dsc", "val_loss", "lr"} <= set(r.metrics) for r in seen)
    assert result.select_metric == "val_dsc" and result.select_mode == "max"
    assert result.best_checkpoint.exists() and result.last_checkpoint.exists()
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt["preprocess"]["kind"] == "image" and ckpt["img_size"] == [32, 32]
    table = pd.read_csv(tmp_path / "eval" / "test" / "per_case.csv")
    summary = json.loads((tmp_path / "eval" / "test" / "summary.json").read_text())
    assert len(table) == summary["metrics"]["n_images"] > 0
    assert summary["protocol"] == "holdout" and summary["split"] == "test"
    assert 0.0 <= summary["metrics"]["dsc"] <= 1.0
    # The per-image means in the summary are the means of the table.
    assert summary["metrics"]["per_image_dice"] == pytest.approx(table["dice"].mean())
    assert not list(tmp_path.rglob("*.tmp*"))  # nothing left half-written


def test_selection_rules_follow_the_protocol():
    paper = ExperimentConfig.from_dict({"data": {"protocol": "paper"}})
    holdout = ExperimentConfig.from_dict({})
    assert selection_rule(paper, val_is_test=True, has_val=True) == ("val_loss", "min")  # VM-UNet ISIC
    assert selection_rule(paper, val_is_test=False, has_val=False) == ("train_loss", "min")  # VM-UNet Synapse
    assert selection_rule(holdout, val_is_test=False, has_val=True) == ("val_dsc", "max")
    explicit = ExperimentConfig.from_dict({"train": {"select_metric": "val_dsc"}})
    with pytest.raises(ValueError, match="no validation split"):
        selection_rule(explicit, val_is_test=False, has_val=False)


def test_nan_loss_is_a_clear_error(isic_root, tmp_path, monkeypatch):
    from vmbench.engine import training

    def nan_loss(cfg, task, num_classes):
        return lambda output, target: output.mean() * float("nan")

    monkeypatch.setattr(training, "build_loss", nan_loss)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 1, step 1"):
        fit(tiny_config(isic_root), tmp_path, evaluate_test=False)


def test_cli_train_evaluate_predict_images(isic_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "synthetic-isic", "--data-root", str(isic_root), "--img-size", "32", "--epochs", "1",
            "--batch-size", "8", "--out", str(out), "--no-progress", "--set", "model.overrides.dims=[8, 16, 32, 64]",
            "--set", "model.overrides.d_state=4"]
    assert main(args) == 0
    assert "best epoch 1" in capsys.readouterr().out
    # The same folder again without --resume: refused, nothing lost.
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--no-progress"]) == 0
    assert (out / "eval" / "test" / "per_case.csv").exists()  # the run's own dataset: RUN/eval/SPLIT

    from PIL import Image

    images = sorted((isic_root / "ISIC2018_Task1-2_Test_Input").glob("*.jpg"))[:2]
    assert main(["predict", "--checkpoint", str(out / "checkpoints" / "best.pt"), *map(str, images),
                 "--out", str(tmp_path / "pred")]) == 0
    for image in images:
        mask = np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}_mask.png"))
        assert mask.shape == np.asarray(Image.open(image)).shape[:2]  # original size
        assert set(np.unique(mask)) <= {0, 255}
    # Two inputs with one output name: refused before anything is written.
    twin = tmp_path / "twin"
    twin.mkdir()
    Image.open(images[0]).save(twin / f"{images[0].stem}.png")
    assert main(["predict", "--checkpoint", str(out / "checkpoints" / "best.pt"), str(images[0]), str(twin),
                 "--out", str(tmp_path / "pred2")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"would both be written to {tmp_path / 'pred2' / images[0].stem}_mask.png" in err
    assert not (tmp_path / "pred2").exists()


def test_cli_predict_nifti_keeps_affine(tmp_path, capsys):
    import nibabel as nib

    raw = tmp_path / "raw"
    synth_synapse(raw, n_cases=30, seed=2, size=64, slices=(8, 10))
    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", "synapse", "--raw", str(raw), "--out", str(prepared), "--mapping", "B"]) == 0
    out = tmp_path / "run"
    assert main(["train", "--model", "unet", "--dataset", "synapse", "--data-root", str(prepared), "--img-size", "32",
                 "--epochs", "1", "--batch-size", "16", "--out", str(out), "--no-progress",
                 "--set", "model.overrides.base_channels=4"]) == 0
    summary = json.loads((out / "eval" / "test" / "summary.json").read_text())
    assert {"dsc", "hd95", "dsc_aorta", "dsc_stomach", "dsc_strict"} <= set(summary["metrics"])
    table = pd.read_csv(out / "eval" / "test" / "per_case.csv")
    assert len(table) == 12 * 8  # 12 test cases x 8 organs
    volume = raw / "img0001.nii.gz"
    assert main(["predict", "--checkpoint", str(out / "checkpoints" / "best.pt"), str(volume), "--out",
                 str(tmp_path / "pred")]) == 0
    source, pred = nib.load(str(volume)), nib.load(str(tmp_path / "pred" / "img0001_pred.nii.gz"))
    assert pred.shape == source.shape
    np.testing.assert_allclose(pred.affine, source.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= set(range(9))
    # (X, Y, Z, 1), as some converters write: read as the 3-D volume, as `data prepare` reads it.
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[..., None], source.affine), str(four_d))
    assert main(["predict", "--checkpoint", str(out / "checkpoints" / "best.pt"), str(four_d), "--out",
                 str(tmp_path / "pred")]) == 0  # fmt: skip
    four_d_pred = nib.load(str(tmp_path / "pred" / "four_d_pred.nii.gz"))
    assert four_d_pred.shape == source.shape
    np.testing.assert_array_equal(np.asarray(four_d_pred.dataobj), np.asarray(pred.dataobj))


def test_cli_errors_are_one_line(tmp_path, capsys):
    cases = [
        (["train", "--model", "vmunett", "--out", str(tmp_path / "a")], "unknown model 'vmunett'; did you mean 'vmunet'"),
        (["train", "--dataset", "isic2018", "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "b")],
         str(tmp_path / "missing")),
        (["train", "--set", "optim.lrr=1", "--out", str(tmp_path / "c")], "unknown key 'optim.lrr'"),
        (["evaluate", "--checkpoint", str(tmp_path / "none.pt")], "none.pt: no such checkpoint file"),
    ]
    for args, expected in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err


class Payload:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def test_unsafe_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Payload()}, path)
    from vmbench.checkpoints import CheckpointFormatError

    with pytest.raises(CheckpointFormatError, match=r"evil\.pt.*weights_only"):
        load_checkpoint(path)


@pytest.mark.slow
def test_vmunet_learns_synthetic_isic(tmp_path):
    """The learning problem is real: VM-UNet at 64x64 reaches test DSC >= 0.80 in a few CPU minutes."""
    cfg = ExperimentConfig.from_dict(
        {
            "data": {"name": "synthetic-isic", "img_size": 64},
            "train": {"epochs": 3, "batch_size": 16, "progress": False},
        }
    )
    result = fit(cfg, tmp_path / "run")
    assert result.test["dsc"] >= 0.80, result.test


class _ClassFromIntensity(torch.nn.Module):
    """Predicts the class written into the image (one-hot logits), so the prediction is known."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0].round().long(), 9).permute(0, 3, 1, 2).float() * 10


def test_synapse_validation_dice_follows_the_test_rules():
    # Organ 1 found exactly; organ 2 predicted but absent from the ground truth; organs 3-8 absent
    # from both. P3 (TransUNet utils.py calculate_metric_percase, Beckschen/TransUNet@02ef001):
    # class 1 -> 1, class 2 -> 1 (prediction non-empty, GT empty), classes 3-8 -> 0: mean 2/8.
    # Strict (vmbench's variant): class 2 -> 0, 3-8 left out: mean 1/2.
    from vmbench.engine import evaluate_volumes

    label = np.zeros((3, 16, 16), dtype=np.int64)
    label[:, 2:6, 2:6] = 1
    image = label.astype(np.float32)
    image[1, 10:14, 10:14] = 2

    class OneCase:
        name, is_volume = "synapse", True

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return {"image": image, "label": label, "id": "case0001", "spacing": (1.0, 1.0, 1.0)}

    model = _ClassFromIntensity()
    for with_hd95 in (False, True):  # validation, test
        summary = evaluate_volumes(model, OneCase(), torch.device("cpu"), (16, 16), with_hd95=with_hd95).summary
        assert summary["dsc"] == pytest.approx(2 / 8)
        assert summary["dsc_strict"] == pytest.approx(1 / 2)
        assert ("hd95" in summary) == with_hd95


def test_selection_metric_must_be_one_the_run_reports():
    from vmbench.protocols import selectable_metrics

    assert "val_loss" not in selectable_metrics("volume", has_val=True)  # slices are predicted, not scored by loss
    volume = ExperimentConfig.from_dict({"data": {"name": "synapse"}, "train": {"select_metric": "val_loss"}})
    with pytest.raises(ValueError, match=r"train.select_metric is 'val_loss'.*val_dsc, val_dsc_strict"):
        selection_rule(volume, val_is_test=False, has_val=True, evaluation="volume")
    typo = ExperimentConfig.from_dict({"train": {"select_metric": "val_dice"}})
    with pytest.raises(ValueError, match="val_per_image_dice"):
        selection_rule(typo, val_is_test=False, has_val=True)
    assert selection_rule(typo.with_overrides({"train.select_metric": "val_miou"}), False, True) == ("val_miou", "max")


# ------------------------------------------------------------------------------------------------
# Code health of the engine package: no dead functions, no unused parameters


def _engine_sources():
    import vmbench.engine as engine

    path = Path(engine.__file__)
    return sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]


def _unused_parameters(tree: ast.AST) -> list[str]:
    """Parameters never read in their function's body (abstract stubs whose body is ``...`` aside)."""
    unused = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = [b for b in node.body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))]
        if not body:  # a Protocol's signature
            continue
        args = node.args
        params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
        params += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
        read = {n.id for b in body for n in ast.walk(b) if isinstance(n, ast.Name)}
        unused += [f"{node.name}({p})" for p in params if p not in read]
    return unused


def test_engine_has_no_dead_code():
    import vmbench

    package = Path(vmbench.__file__).parent
    every_source = "\n".join(p.read_text() for p in package.rglob("*.py"))
    for source in _engine_sources():
        tree = ast.parse(source.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                # A private helper must be used somewhere (its definition counts once).
                uses = len(re.findall(rf"\b{node.name}\b", every_source))
                assert uses > 1, f"{source.name}: {node.name} is never used"
        assert not _unused_parameters(tree), f"{source.name}: unused parameters {_unused_parameters(tree)}"


def test_selection_on_the_test_split_is_flagged(caplog):
    paper = ExperimentConfig.from_dict({"data": {"protocol": "paper"}})
    with caplog.at_level(logging.WARNING, logger="vmbench.engine"):
        assert selection_rule(paper, val_is_test=True, has_val=True) == ("val_loss", "min")
    assert "validation split is the test split" in caplog.text and "optimistic" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vmbench.engine"):
        selection_rule(paper, val_is_test=False, has_val=True)  # a separate validation split
        on_train = paper.with_overrides({"train.select_metric": "train_loss"})
        selection_rule(on_train, val_is_test=True, has_val=True)  # the test split plays no part
    assert not caplog.records


# ------------------------------------------------------------------------------------------------
# Checkpoints: models rebuilt from them, one-line errors

TINY_TRANSFUSE = {"depth": 1, "embed_dim": 32, "num_heads": 2, "resnet_layers": [1, 1, 1]}


def _write_state(path, model_name, overrides, weights, pretrained=None):
    from vmbench.engine import TrainState
    from vmbench.io import atomic_torch_save

    config = ExperimentConfig.from_dict(
        {"data": {"img_size": 32}, "model": {"name": model_name, "overrides": overrides, "pretrained": pretrained}}
    )
    state = TrainState(config=config.to_dict(), epoch=1, img_size=(32, 32), preprocess={"kind": "image"},
                       model=weights, history=[], best_value=0.5, best_epoch=1, select_metric="val_dsc")
    atomic_torch_save(state.to_dict(with_optimizer=False), path)
    return path


def test_model_from_checkpoint_never_reads_pretrained_files(tmp_path):
    """The checkpoint holds the weights: weight files its config names (absent here) are not read."""
    import vmbench
    from vmbench.engine import model_from_checkpoint

    source = vmbench.create_model("transfuse-s", num_classes=1, img_size=(32, 32), **TINY_TRANSFUSE)
    weights = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    overrides = {**TINY_TRANSFUSE, "resnet_weights": str(tmp_path / "absent-resnet34.pth"),
                 "deit_weights": str(tmp_path / "absent-deit-s.pth")}  # fmt: skip
    absent = str(tmp_path / "absent.pth")
    path = _write_state(tmp_path / "best.pt", "transfuse-s", overrides, weights, pretrained=absent)
    model, cfg, state = model_from_checkpoint(path)
    assert not model.training and cfg.model.name == "transfuse-s" and state.img_size == (32, 32)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_checkpoint_of_another_model_is_one_line(tmp_path):
    import vmbench
    from vmbench.engine import model_from_checkpoint

    unet = vmbench.create_model("unet", num_classes=1, base_channels=4)
    path = _write_state(tmp_path / "mixed.pt", "vmunet", dict(TINY_VMUNET), unet.state_dict())
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    assert str(path) in message and "'vmunet'" in message
    n_vmunet = len(vmbench.create_model("vmunet", **TINY_VMUNET).state_dict())
    assert f"{n_vmunet} missing, {len(unet.state_dict())} unexpected, 0 mismatched" in message


def test_checkpoint_and_device_errors_name_what_to_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"absent\.pt does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain\.pt is not a vmbench checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    from vmbench.engine import resolve_device

    with pytest.raises(ConfigError, match="train.device: 'gpu0' is not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="train.device is 'cuda'"):
            resolve_device("cuda")


def test_mixed_precision_on_cpu_is_refused_before_training(tmp_path):
    cfg = ExperimentConfig.from_dict({"train": {"amp": "bf16", "device": "cpu"},
                                      "data": {"root": str(tmp_path / "never-read")}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"train.amp: 'bf16' needs a CUDA device"):
        fit(cfg, tmp_path)
    assert not (tmp_path / "never-read").exists()


def test_deep_supervision_outputs_are_read_by_their_last_head():
    from vmbench.engine import evaluate_2d, final_logits

    head = torch.randn(2, 1, 8, 8)
    assert final_logits(head) is head
    assert final_logits((torch.zeros(2, 1, 8, 8), head)) is head

    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return (x[:, :1] * 0 - 5, x[:, :1])  # the last head is the prediction

    class OneHead(torch.nn.Module):
        def forward(self, x):
            return x[:, :1]

    class Images:
        name = "synthetic-isic"

        def __len__(self):
            return 4

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            mask = (torch.rand(1, 8, 8, generator=g) > 0.5).float()
            return {"image": torch.randn(3, 8, 8, generator=g), "mask": mask, "id": str(i)}

    two = evaluate_2d(TwoHeads(), Images(), torch.device("cpu")).summary
    one = evaluate_2d(OneHead(), Images(), torch.device("cpu")).summary
    assert two == one


def test_fixed_grid_models_are_built_for_the_training_size():
    # TransFuse-S takes img_size through **overrides (its factory's own signature does not name it).
    from vmbench.engine import build_model

    cfg = ExperimentConfig.from_dict({"model": {"name": "transfuse-s", "overrides": TINY_TRANSFUSE}})
    model = build_model(cfg, 1, (32, 48))
    assert model.img_size == (32, 48)
    assert model.eval()(torch.zeros(1, 3, 32, 48)).shape == (1, 1, 32, 48)


def test_both_deep_supervision_layouts():
    from vmbench.engine import final_logits, supervised_loss

    target = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    full, half = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    class NnUNetLike(torch.nn.Module):  # full resolution first; targets brought down to each output
        deep_supervision_weights = (0.75, 0.25)
        deep_supervision_targets = "downsample"

    class TransFuseLike(torch.nn.Module):  # every head at full size; the last is the prediction
        deep_supervision_weights = (0.25, 0.75)

    assert final_logits([full, half]) is full
    # nearest-exact from 8 to 4 samples source pixels 1, 3, 5, 7 (floor((i + 0.5) * 2)).
    expected = 0.75 * bce(full, target) + 0.25 * bce(half, target[..., 1::2, 1::2])
    torch.testing.assert_close(supervised_loss(bce, [full, half], target, NnUNetLike()), expected)
    other = torch.randn(2, 1, 8, 8)
    assert final_logits((other, full)) is full
    expected = 0.25 * bce(other, target) + 0.75 * bce(full, target)
    torch.testing.assert_close(supervised_loss(bce, (other, full), target, TransFuseLike()), expected)
    with pytest.raises(TypeError, match="declares no deep_supervision_weights"):
        supervised_loss(bce, (other, full), target, torch.nn.Identity())
