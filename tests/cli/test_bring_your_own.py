"""Your data, your model: a folder dataset trained end to end, the example model package through
its entry point and as ``package.module:factory``, ``models check``, and broken plug-ins kept to
one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmbench.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tinyseg"
sys.path.insert(0, str(REPO / "tests" / "data"))
import user_formats as F  # noqa: E402


@pytest.fixture
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


def test_train_one_epoch_on_a_folder_dataset(tmp_path, capsys, example_on_path):
    root, truth = F.folder_png(tmp_path / "polyps", n=10)
    out = tmp_path / "run"
    args = ["train", "--dataset", str(root), "--model", "tinyseg:build", "--epochs", "1", "--img-size", "32",
            "--batch-size", "4", "--out", str(out), "--no-progress", "--no-track"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "training tinyseg:build on polyps" in printed and "test: {" in printed
    summary = json.loads((out / "eval" / "test" / "summary.json").read_text())
    assert summary["dataset"] == "polyps" and summary["metrics"]["n_images"] == 2  # 20% of 10, never ISIC


def test_fit_on_a_declared_folder_dataset(tmp_path, example_on_path):
    from vmbench.config import ExperimentConfig
    from vmbench.data.user import declare_path
    from vmbench.engine import fit
    from vmbench.rundir import RunDir

    root, _ = F.folder_png(tmp_path / "Dataset007_Lesions", n=8)
    overrides = declare_path(root, name="t-fit")
    cfg = ExperimentConfig().with_overrides({**overrides, "model.name": "tinyseg:build", "train.epochs": 1,
                                             "data.img_size": 32, "train.batch_size": 4, "train.progress": False})
    result = fit(cfg, RunDir(tmp_path / "fit"))
    assert result.evaluation.summary["n_images"] == 2 and 0.0 <= result.evaluation.summary["dsc"] <= 1.0


def test_models_check(capsys, example_on_path):
    assert main(["models", "check", "tinyseg:build"]) == 0
    out = capsys.readouterr().out
    assert "contract kept" in out and "ok   training on CPU" in out and len(out.splitlines()) <= 10
    assert main(["models", "check", "no_such_module:build"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot import no_such_module" in err and "\n" not in err


def _dist_info(folder: Path, name: str, entry_points: str) -> None:
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_entry_point_example_and_broken_plugins(tmp_path):
    """The example package registered through ``vmbench.models`` as pip would install it, beside a
    broken model plug-in and a broken dataset plug-in: each broken one is one line, nothing else fails."""
    site = tmp_path / "site"
    _dist_info(site, "tinyseg", "[vmbench.models]\ntinyseg = tinyseg\n")
    _dist_info(site, "brokenplug", "[vmbench.models]\nbrokenmodel = brokenplug_missing\n"
                                   "[vmbench.datasets]\nbrokendata = brokenplug_missing.data\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(EXAMPLE)])}
    vmbench = [sys.executable, "-m", "vmbench"]
    out = subprocess.run([*vmbench, "models", "check", "tinyseg"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "contract kept" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "'brokenmodel'" in warnings[0] and "skipped" in warnings[0]
    out = subprocess.run([*vmbench, "data", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "isic2018" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "'brokendata'" in warnings[0]


def test_a_multiclass_nnunet_2d_folder_trains_from_the_command_line(tmp_path, capsys):
    root, _ = F.nnunet_2d(tmp_path / "Dataset120_Road")
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(root), "--model", "unet", "--img-size", "32", "--epochs", "1",
                 "--batch-size", "4", "--set", "model.overrides.base_channels=4", "--out", str(out), "--no-track",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test:" in printed and '"dsc"' in printed
    import json

    metrics = json.loads((out / "eval" / "test" / "summary.json").read_text())["metrics"]
    assert {"dsc", "dsc_road", "dsc_lane"} <= set(metrics)  # the classes dataset.json names


def test_dataset_format_needs_a_folder(capsys):
    assert main(["train", "--dataset-format", "folder", "--model", "unet", "--no-track"]) == 2
    assert "--dataset-format" in capsys.readouterr().err


def test_fit_on_nnunet_3d_volumes_scores_each_volume(tmp_path, example_on_path):
    from vmbench.config import ExperimentConfig
    from vmbench.data.user import declare_path
    from vmbench.engine import fit
    from vmbench.rundir import RunDir

    root, truth = F.nnunet_3d(tmp_path / "Dataset005_Liver")
    cfg = ExperimentConfig().with_overrides({**declare_path(root, name="t-fit3d"), "model.name": "tinyseg:build",
                                             "train.epochs": 1, "data.img_size": 32, "train.batch_size": 4,
                                             "train.progress": False})
    result = fit(cfg, RunDir(tmp_path / "fit3d"))
    summary = result.evaluation.summary
    assert summary["n_cases"] == 1 and {"dsc", "hd95", "dsc_liver", "dsc_tumour"} <= set(summary)
