"""Every bad input to ``vmbench`` is answered with one line naming the file, field or option.

Each case runs the command in-process and checks: exit code 2, exactly one non-empty line on
standard error, the named file/field/option in it, no traceback, and for inputs that used to be
accepted silently, that nothing was written. docs/bad_inputs.md lists the cases with these ids.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from vmbench.cli import main
from vmbench.config import ExperimentConfig

TRAIN = ["train", "--model", "unet", "--dataset", "synthetic-isic", "--img-size", "32", "--epochs", "1",
         "--batch-size", "4", "--no-progress", "--no-track", "--set", "model.overrides.base_channels=4"]
SPACE = {"experiment": "bad-inputs", "model": "unet", "dataset": "synthetic-isic",
         "budget": {"trials": 2, "max_epochs": 1}, "fixed": {"data": {"img_size": 32}},
         "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}}, "final": {"seeds": [1]}}


def _checkpoint(path, model_name, weights):
    from vmbench.engine import TrainState
    from vmbench.io import atomic_torch_save

    config = ExperimentConfig.from_dict({"data": {"img_size": 32}, "model": {"name": model_name,
                                                                             "overrides": {"base_channels": 4}}})
    state = TrainState(config=config.to_dict(), epoch=1, img_size=(32, 32), preprocess={"kind": "image"},
                       model=weights, history=[], best_value=0.5, best_epoch=1, select_metric="val_dsc")
    atomic_torch_save(state.to_dict(with_optimizer=False), path)
    return path


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Small files shared by every case: nothing here trains or generates data."""
    import vmbench

    root = tmp_path_factory.mktemp("bad")
    (root / "afile").write_text("x")
    (root / "empty_dir").mkdir()
    (root / "nonempty").mkdir()
    (root / "nonempty" / "keep.txt").write_text("x")
    (root / "text.pt").write_text("this is not a checkpoint\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "bad.yaml").write_text("data: [unclosed\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01garbage")
    (root / "unknown.yaml").write_text("data:\n  imgsize: 32\n")
    (root / "img.txt").write_text("not an image")
    (root / "corrupt.png").write_text("not a png")
    weights = vmbench.create_model("unet", num_classes=1, base_channels=4).state_dict()
    _checkpoint(root / "good.pt", "unet", weights)
    _checkpoint(root / "other_model.pt", "att-unet", weights)
    _checkpoint(root / "missing_keys.pt", "unet", {k: v for i, (k, v) in enumerate(weights.items()) if i % 2})
    for name, changes in SPACES.items():
        values = {**SPACE, **changes}
        (root / f"{name}.yaml").write_text(yaml.safe_dump({k: v for k, v in values.items() if v is not None}))
    (root / "lr_inf.yaml").write_text(yaml.safe_dump(SPACE).replace("high: 0.001", "high: .inf"))
    return root


SPACES = {
    "empty_space": {"space": {}},
    "no_space": {"space": None},
    "trials_huge": {"budget": {"trials": 10**12, "max_epochs": 1}},
    "epochs_huge": {"budget": {"trials": 2, "max_epochs": 10**9}},
    "img100": {"model": "vmunet", "fixed": {"data": {"img_size": 100}}},
    "swin64": {"model": "swin-unet", "fixed": {"data": {"img_size": 64}}},
    "space_img": {"model": "vmunet", "fixed": {},
                  "space": {"data.img_size": {"type": "choice", "values": [64, 100]}}},
    "batch0": {"fixed": {"train": {"batch_size": 0}}},
    "epochs_neg": {"fixed": {"train": {"epochs": -5}}},
    "model_name": {"fixed": {"model": {"name": "vmunet"}}},
    "override_bad": {"fixed": {"data": {"img_size": 32}, "model": {"overrides": {"no_such_arg": 1}}}},
}

# (id, argv with {fx} for the shared files and {out} for a fresh folder, text the line must contain)
CASES = [
    # argparse's refusals: one line, not the usage block
    ("train-batch-size-0", TRAIN + ["--batch-size", "0"], "--batch-size"),
    ("train-epochs-0", TRAIN + ["--epochs", "0"], "--epochs"),
    ("train-lr-nan", TRAIN + ["--lr", "nan"], "--lr"),
    ("train-amp-unknown", TRAIN + ["--amp", "fp8"], "--amp"),
    ("evaluate-split-unknown", ["evaluate", "--checkpoint", "{fx}/good.pt", "--split", "dev"], "--split"),
    ("predict-threshold-0", ["predict", "--checkpoint", "{fx}/good.pt", "{fx}/img.txt", "--out", "{out}",
                             "--threshold", "0"], "--threshold"),
    ("predict-threshold-1", ["predict", "--checkpoint", "{fx}/good.pt", "{fx}/img.txt", "--out", "{out}",
                             "--threshold", "1"], "--threshold"),
    ("synth-kind-unknown", ["data", "synth", "brats", "--out", "{out}"], "kind"),
    ("models-num-classes-0", ["models", "--num-classes", "0"], "--num-classes"),
    ("bench-device-unknown", ["bench", "scan", "--device", "tpu"], "--device"),
    ("ui-port-99999", ["ui", "--port", "99999"], "--port"),
    ("leaderboard-format-unknown", ["leaderboard", "--format", "pdf"], "--format"),
    ("no-command", [], "COMMAND"),
    # train
    ("train-config-list", TRAIN + ["--config", "{fx}/list.yaml"], "list.yaml"),
    ("train-config-malformed", TRAIN + ["--config", "{fx}/bad.yaml"], "bad.yaml: not valid YAML"),
    ("train-config-binary", TRAIN + ["--config", "{fx}/binary.yaml"], "binary.yaml: not a text"),
    ("train-config-unknown-key", TRAIN + ["--config", "{fx}/unknown.yaml"], "data.imgsize"),
    ("train-config-folder", TRAIN + ["--config", "{fx}/empty_dir"], "--config"),
    ("train-set-no-equals", TRAIN + ["--set", "optim.lr"], "--set 'optim.lr'"),
    ("train-set-wrong-type", TRAIN + ["--set", "train.epochs=three"], "train.epochs"),
    ("train-set-nan", TRAIN + ["--set", "optim.lr=.nan", "--out", "{out}"], "optim.lr"),
    ("train-set-inf", TRAIN + ["--set", "optim.lr=.inf", "--out", "{out}"], "optim.lr"),
    ("train-model-typo", TRAIN + ["--model", "vmunett"], "did you mean 'vmunet'"),
    ("train-out-file", TRAIN + ["--out", "{fx}/afile"], "--out"),
    ("train-out-inside-file", TRAIN + ["--out", "{fx}/afile/run"], "is a file"),
    ("train-resume-nothing", TRAIN + ["--out", "{out}", "--resume"], "nothing to resume"),
    ("train-img-size-model-rule", TRAIN + ["--img-size", "100", "--out", "{out}"], "data.img_size (--img-size): 100"),
    ("train-unknown-model-override", TRAIN + ["--set", "model.overrides.no_such_arg=3", "--out", "{out}"],
     "model.overrides: model 'unet' does not take it"),
    ("train-data-root-is-a-file", TRAIN + ["--data-root", "{fx}/afile", "--out", "{out}"], "--data-root"),
    ("train-tracking-uri-unreachable", [a for a in TRAIN if a != "--no-track"] + [
        "--out", "{out}", "--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri http://127.0.0.1:9"),
    # evaluate: checkpoints, --out before any work
    ("evaluate-text-checkpoint", ["evaluate", "--checkpoint", "{fx}/text.pt"], "text.pt' is a text file"),
    ("evaluate-checkpoint-missing", ["evaluate", "--checkpoint", "{fx}/none.pt"], "--checkpoint"),
    ("evaluate-other-model", ["evaluate", "--checkpoint", "{fx}/other_model.pt", "--no-track", "--out", "{out}"],
     "other_model.pt: the weights written for model 'att-unet'"),
    ("evaluate-missing-keys", ["evaluate", "--checkpoint", "{fx}/missing_keys.pt", "--no-track", "--out",
                               "{out}"], "missing"),
    ("evaluate-out-inside-file", ["evaluate", "--checkpoint", "{fx}/good.pt", "--out", "{fx}/afile/x"], "--out"),
    ("evaluate-other-kind-of-dataset", ["evaluate", "--checkpoint", "{fx}/good.pt", "--dataset",
                                        "synthetic-synapse", "--no-track", "--out", "{out}"], "--dataset"),
    # predict
    ("predict-wrong-suffix", ["predict", "--checkpoint", "{fx}/good.pt", "{fx}/img.txt", "--out", "{out}"],
     "img.txt: unsupported input type"),
    ("predict-corrupt-image", ["predict", "--checkpoint", "{fx}/good.pt", "{fx}/corrupt.png", "--out", "{out}"],
     "corrupt.png: cannot read image"),
    ("predict-missing-input", ["predict", "--checkpoint", "{fx}/good.pt", "{fx}/none.png", "--out", "{out}"],
     "none.png"),
    # sweep --dry-run: the file
    ("sweep-space-folder", ["sweep", "--space", "{fx}/empty_dir", "--dry-run"], "--space"),
    ("sweep-space-binary", ["sweep", "--space", "{fx}/binary.yaml", "--dry-run"], "binary.yaml: not a text"),
    ("sweep-space-list", ["sweep", "--space", "{fx}/list.yaml", "--dry-run"], "expected a mapping, got list"),
    ("sweep-empty-space", ["sweep", "--space", "{fx}/empty_space.yaml", "--dry-run"], "space: has no entries"),
    ("sweep-no-space", ["sweep", "--space", "{fx}/no_space.yaml", "--dry-run"], "space: has no entries"),
    ("sweep-trials-absurd", ["sweep", "--space", "{fx}/trials_huge.yaml", "--dry-run"], "budget.trials"),
    ("sweep-max-epochs-absurd", ["sweep", "--space", "{fx}/epochs_huge.yaml", "--dry-run"], "budget.max_epochs"),
    ("sweep-fixed-img-size-model-rule", ["sweep", "--space", "{fx}/img100.yaml", "--dry-run"],
     "fixed data.img_size: 100 cannot be used with model 'vmunet'"),
    ("sweep-fixed-img-size-swin", ["sweep", "--space", "{fx}/swin64.yaml", "--dry-run"], "swin-unet"),
    ("sweep-space-img-size-model-rule", ["sweep", "--space", "{fx}/space_img.yaml", "--dry-run"],
     "space.data.img_size: 100 cannot be used"),
    ("sweep-fixed-batch-size-0", ["sweep", "--space", "{fx}/batch0.yaml", "--dry-run"], "train.batch_size"),
    ("sweep-fixed-train-epochs", ["sweep", "--space", "{fx}/epochs_neg.yaml", "--dry-run"],
     "train.epochs: is set by the sweep"),
    ("sweep-fixed-model-name", ["sweep", "--space", "{fx}/model_name.yaml", "--dry-run"], "model.name"),
    ("sweep-fixed-unknown-override", ["sweep", "--space", "{fx}/override_bad.yaml", "--dry-run"], "model.overrides"),
    ("sweep-space-infinite-bound", ["sweep", "--space", "{fx}/lr_inf.yaml", "--dry-run"], "space.optim.lr.high"),
    # data
    ("synth-into-non-empty-folder", ["data", "synth", "isic", "--out", "{fx}/nonempty", "--n", "3"], "--overwrite"),
    ("synth-synapse-with-isic-option", ["data", "synth", "synapse", "--out", "{out}", "--layout", "prepared"],
     "--layout"),
    ("prepare-raw-is-a-file", ["data", "prepare", "synapse", "--raw", "{fx}/afile", "--out", "{out}"], "--raw"),
    # leaderboard and report: the output path before any store is read
    ("leaderboard-out-folder", ["leaderboard", "--out", "{fx}/empty_dir"], "--out"),
    ("report-out-folder", ["report", "--out", "{fx}/empty_dir"], "--out"),
    ("report-out-suffix", ["report", "--out", "{out}.txt"], "--out"),
    ("report-bootstrap-negative", ["report", "--bootstrap", "-1"], "--bootstrap -1"),
    ("leaderboard-no-store", ["leaderboard", "--tracking-uri", "sqlite:///{out}/mlflow.db"], "no MLflow store"),
]


@pytest.mark.parametrize("argv, named", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(fx, argv, named, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder either
    argv = [a.replace("{fx}", str(fx)).replace("{out}", str(tmp_path / "out")) for a in argv]
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert named in lines[0], lines[0]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not written, f"a refused command wrote {written}"
    assert not (tmp_path / "out").exists(), "a refused command made its output folder"


@pytest.mark.slow  # builds every registered model on the meta device
def test_every_registered_model_checks_its_input_before_computing():
    """check_input_size stops at the first submodule: every model must refuse 100x100 before it."""
    import vmbench
    from vmbench.engine.builders import _takes_img_size
    from vmbench.errors import ModelInputError
    from vmbench.models.inputs import check_input_size

    for name in vmbench.list_models():
        info = vmbench.model_info(name)
        sizes = {"bad": (100, 100), "good": tuple(info.input_size)}
        for kind, hw in sizes.items():
            kwargs = {"img_size": hw} if _takes_img_size(info.factory) else {}
            try:
                with torch.device("meta"):
                    model = vmbench.create_model(name, num_classes=1, **kwargs)
                check_input_size(model.eval(), (2, 3, *hw))
                refused = None
            except ModelInputError as error:
                refused = str(error)
            assert (refused is not None) == (kind == "bad"), (name, hw, refused)
