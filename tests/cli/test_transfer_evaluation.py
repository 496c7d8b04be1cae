"""``vmbench evaluate --dataset PATH``: a checkpoint scored on a user's dataset folder (issue 20,
part 4, U-Bench's zero-shot axis), filed as a transfer evaluation of the checkpoint's MLflow run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vmbench.cli import main

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "data"))
import user_formats as F  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tracking_store, one_torch_thread):
    """A tiny model trained one epoch on synthetic-isic, tracked in the test run's store."""
    from vmbench.config import ExperimentConfig
    from vmbench.engine.tracked import train_tracked
    from vmbench.rundir import RunDir

    root = tmp_path_factory.mktemp("transfer")
    cfg = ExperimentConfig.from_dict({
        "data": {"name": "synthetic-isic", "img_size": 32},
        "model": {"name": "unet", "overrides": {"base_channels": 4}},
        "train": {"epochs": 1, "batch_size": 4, "progress": False},
    })
    _, tracked = train_tracked(cfg, RunDir(root / "run"), tracking_uri=tracking_store, experiment="transfer-test",
                               runs_dir=root / "runs")
    return {"root": root, "run": root / "run", "best": root / "run" / "checkpoints" / "best.pt",
            "run_id": tracked.run.run_id, "uri": tracking_store}


def test_evaluate_on_a_folder_dataset(trained, tmp_path, capsys):
    folder, truth = F.folder_png(tmp_path / "xfer-polyps", n=8)
    rc = main(["evaluate", "--checkpoint", str(trained["best"]), "--dataset", str(folder), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    eval_dir = trained["run"] / "eval" / "xfer-polyps-test"
    assert "vmbench.transfer.xfer-polyps-test" in out and str(eval_dir / "summary.json") in out
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert (summary["dataset"], summary["split"], summary["protocol"]) == ("xfer-polyps", "test", "holdout")
    assert (summary["transfer"], summary["trained_on"]) == (True, "synthetic-isic")
    assert summary["data_root"] == str(folder.resolve()) and summary["resolution"] == "native"
    cases = pd.read_csv(eval_dir / "per_case.csv")["id"].tolist()
    metrics = summary["metrics"]
    # Scored on the folder's own masks at each image's released size: the generator's drawing.
    assert metrics["n_images"] == len(cases) and set(cases) <= set(truth)
    assert metrics["tp"] + metrics["fn"] == sum(int(truth[c].sum()) for c in cases)
    assert metrics["tp"] + metrics["fp"] + metrics["fn"] + metrics["tn"] == sum(truth[c].size for c in cases)
    assert metrics["dsc"] == pytest.approx(2 * metrics["tp"] / (2 * metrics["tp"] + metrics["fp"] + metrics["fn"]))

    # Attached to the checkpoint's MLflow run and tagged as a transfer evaluation.
    from mlflow import MlflowClient

    run = MlflowClient(trained["uri"]).get_run(trained["run_id"])
    assert run.data.tags["vmbench.transfer.xfer-polyps-test"] == "true"
    assert run.data.metrics["eval_xfer-polyps-test_dsc"] == pytest.approx(metrics["dsc"])
    assert run.data.metrics["eval_xfer-polyps-test_n_images"] == len(cases)
    assert not any(k.startswith("vmbench.transfer.") for k in run.data.tags if k != "vmbench.transfer.xfer-polyps-test")


def test_predictions_agree_with_vmbench_predict(trained, tmp_path):
    """The transfer Dice against one computed here from ``vmbench predict``'s masks (its own reading
    and resizing) and the generator's truth: equal up to pixels at the threshold's edge."""
    from vmbench.predict import predict_paths

    folder, truth = F.folder_png(tmp_path / "kvasir", n=8)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(trained["best"]), "--dataset", str(folder), "--no-progress",
                 "--no-track", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["metrics"]
    cases = pd.read_csv(out / "per_case.csv")["id"].tolist()
    outputs = {Path(p.source).stem: p.output for p in
               predict_paths(trained["best"], [str(folder / "images" / f"{c}.png") for c in cases], tmp_path / "pred")}
    tp = fp = fn = 0
    for c in cases:
        p = np.asarray(Image.open(outputs[c])) > 0
        t = truth[c].astype(bool)
        tp, fp, fn = tp + int((p & t).sum()), fp + int((p & ~t).sum()), fn + int((~p & t).sum())
    assert summary["tp"] + summary["fn"] == tp + fn
    assert summary["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=0.005)


def test_folder_of_another_kind_refused_in_one_line(trained, tmp_path, capsys):
    folder, _ = F.folder_multiclass(tmp_path / "organs", n=4, test=1)
    rc = main(["evaluate", "--checkpoint", str(trained["best"]), "--dataset", str(folder), "--no-track",
               "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"--dataset {folder}:" in lines[0] and "trained on synthetic-isic" in lines[0], lines[0]
    assert "3 output channel(s), multiclass2d evaluation" in lines[0], lines[0]
    assert not (trained["run"] / "eval" / "organs-test").exists()


def test_folder_with_data_root_refused(trained, tmp_path, capsys):
    folder, _ = F.folder_png(tmp_path / "skin", n=4)
    rc = main(["evaluate", "--checkpoint", str(trained["best"]), "--dataset", str(folder), "--data-root",
               str(tmp_path), "--no-track"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.endswith("is already the dataset's folder; drop --data-root"), err


def test_paper_checkpoint_is_scored_on_a_folder_under_holdout(tmp_path):
    """A declared dataset has no published (paper) split: a paper-protocol checkpoint is scored on its
    holdout test split, and the protocol recorded says so."""
    from vmbench.config import ExperimentConfig
    from vmbench.data.user import declare_path
    from vmbench.engine.evaluation import _data_config

    folder, _ = F.folder_png(tmp_path / "derm", n=4)
    declared = declare_path(folder)
    options = {k.split(".", 2)[2]: v for k, v in declared.items() if k.startswith("data.options.")}
    trained = ExperimentConfig.from_dict({"data": {"name": "synthetic-isic", "protocol": "paper"}})
    cfg = _data_config(trained, declared["data.name"], declared["data.root"], None, options)
    assert (cfg.data.name, cfg.data.protocol, cfg.data.root) == ("derm", "holdout", str(folder.resolve()))
    assert cfg.data.options == options


@pytest.fixture(scope="module")
def apart_folder(tmp_path_factory):
    """One folder for the cases below: a declared dataset's name is registered once per process."""
    return F.folder_png(tmp_path_factory.mktemp("apart") / "xfer-apart", n=6)[0]


@pytest.mark.parametrize("where, message", [
    ("{data}", "is the dataset folder"), ("{data}/images/scores", "lies inside the dataset folder"),
    ("{parent}", "contains the dataset folder"),
])
def test_scores_never_land_in_the_dataset_folder(trained, apart_folder, capsys, where, message):
    folder = apart_folder
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    out = where.format(data=folder, parent=folder.parent)
    rc = main(["evaluate", "--checkpoint", str(trained["best"]), "--dataset", str(folder), "--out", out,
               "--no-progress", "--no-track"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # nothing written or removed
    assert not (folder.parent / "per_case.csv").exists()
