"""The single-trial engine: training, selection, exact resume, evaluation outputs, CLI round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from vmbench.cli import main
from vmbench.config import ExperimentConfig
from vmbench.data import synth_isic, synth_synapse
from vmbench.engine import TrainingDivergedError, fit, load_checkpoint, selection_rule

TINY_VMUNET = {"dims": [8, 16, 32, 64], "d_state": 4}


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic")
    synth_isic(root, n=30, seed=1, layout="challenge", year=2018)
    return root


def tiny_config(root, out_dir, **sections) -> ExperimentConfig:
    values = {
        "data": {"name": "synthetic-isic", "root": str(root), "img_size": 32},
        "model": {"name": "vmunet", "overrides": dict(TINY_VMUNET)},
        "train": {"epochs": 2, "batch_size": 8, "progress": False, "seed": 3},
        "out_dir": str(out_dir),
    }
    for name, extra in sections.items():
        values.setdefault(name, {}).update(extra)
    return ExperimentConfig.from_dict(values)


def test_resume_equals_uninterrupted_training(isic_root, tmp_path):
    straight = fit(tiny_config(isic_root, tmp_path / "straight", train={"epochs": 4}), evaluate_test=False)

    class Crash(Exception):
        pass

    def crash_after_two(result):
        if result.epoch == 2:
            raise Crash

    interrupted_cfg = tiny_config(isic_root, tmp_path / "resumed", train={"epochs": 4})
    with pytest.raises(Crash):
        fit(interrupted_cfg, callbacks=[crash_after_two], evaluate_test=False)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = fit(interrupted_cfg, resume=True, evaluate_test=False)

    a = load_checkpoint(straight.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert a["epoch"] == b["epoch"] == 4
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert straight.best_epoch == resumed.best_epoch


def test_resume_refuses_a_different_config(isic_root, tmp_path):
    fit(tiny_config(isic_root, tmp_path, train={"epochs": 1}), evaluate_test=False)
    with pytest.raises(ValueError, match="different configuration"):
        fit(tiny_config(isic_root, tmp_path, train={"epochs": 1}, optim={"lr": 0.5}), resume=True, evaluate_test=False)


def test_fit_writes_checkpoints_and_test_tables(isic_root, tmp_path):
    seen = []
    result = fit(tiny_config(isic_root, tmp_path), callbacks=[seen.append])
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
    import vmbench.engine as engine

    def nan_loss(cfg, task, num_classes):
        return lambda output, target: output.mean() * float("nan")

    monkeypatch.setattr(engine, "build_loss", nan_loss)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 1, step 1"):
        fit(tiny_config(isic_root, tmp_path), evaluate_test=False)


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
    assert (out / "eval" / "synthetic-isic-test" / "per_case.csv").exists()

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
        (["evaluate", "--checkpoint", str(tmp_path / "none.pt")], "none.pt does not exist"),
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
def test_vmunet_learns_synthetic_isic(tmp_path, monkeypatch):
    """The learning problem is real: VM-UNet at 64x64 reaches test DSC >= 0.80 in a few CPU minutes."""
    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    cfg = ExperimentConfig.from_dict(
        {
            "data": {"name": "synthetic-isic", "img_size": 64},
            "train": {"epochs": 3, "batch_size": 16, "progress": False},
            "out_dir": str(tmp_path / "run"),
        }
    )
    result = fit(cfg)
    assert result.test["dsc"] >= 0.80, result.test


class _ClassFromIntensity(torch.nn.Module):
    """Predicts the class written into the image (one-hot logits), so the prediction is known."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0].round().long(), 9).permute(0, 3, 1, 2).float() * 10


def test_synapse_validation_dice_follows_the_test_rules():
    # Organ 1 found exactly; organ 2 predicted but absent from the ground truth; organs 3-8 absent
    # from both. P3 (spec protocols 5.3): class 1 -> 1, class 2 -> 1 (prediction non-empty, GT
    # empty), classes 3-8 -> 0: mean 2/8. Strict (5.4): class 2 -> 0, 3-8 left out: mean 1/2.
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
    from vmbench.engine import selectable_metrics

    assert "val_loss" not in selectable_metrics("volume", has_val=True)  # slices are predicted, not scored by loss
    volume = ExperimentConfig.from_dict({"data": {"name": "synapse"}, "train": {"select_metric": "val_loss"}})
    with pytest.raises(ValueError, match=r"train.select_metric is 'val_loss'.*val_dsc, val_dsc_strict"):
        selection_rule(volume, val_is_test=False, has_val=True, evaluation="volume")
    typo = ExperimentConfig.from_dict({"train": {"select_metric": "val_dice"}})
    with pytest.raises(ValueError, match="val_per_image_dice"):
        selection_rule(typo, val_is_test=False, has_val=True)
    assert selection_rule(typo.with_overrides({"train.select_metric": "val_miou"}), False, True) == ("val_miou", "max")
