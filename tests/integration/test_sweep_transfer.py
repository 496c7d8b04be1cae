"""A search space's ``transfer:`` key (issue 20, part 4; U-Bench's zero-shot axis): every final run is
also scored on a dataset it was not trained on, and the leaderboard and the report show those scores
as transfer tables, with their own paired tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from vmbench.config import ConfigError
from vmbench.search_space import parse_spec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "data"))
import user_formats as F  # noqa: E402

BASE = {
    "experiment": "xfer",
    "name": "xfer",
    "models": ["unet", "ultralight-vmunet"],
    "reference": "unet",
    "dataset": "synthetic-isic",
    "budget": {"trials": 1, "concurrent": 1, "max_epochs": 1},
    "resources": {"cpu": 1, "gpu": 0},
    "fixed": {"data": {"img_size": 32, "options": {"n": 20}}, "train": {"batch_size": 8}},
    "per_model": {"unet": {"fixed": {"model.overrides.base_channels": 4}}},
    "space": {},
    "final": {"seeds": [1, 2]},
    "sampler": {"name": "random", "seed": 0},
}


@pytest.mark.parametrize("transfer, message", [
    (["synthetic-isic"], "transfer[0]: 'synthetic-isic' is the dataset the sweep trains on"),
    (["synthetic-synapse"], "transfer[0]: synthetic-synapse (9 output channel(s), volume evaluation) cannot score "
                            "models trained on synthetic-isic"),
    (["isic2071"], "transfer[0]: unknown dataset 'isic2071'"),
    ([{"name": "x", "path": "/nonexistent/folder"}], "transfer[0].path: /nonexistent/folder is not a folder"),
    (["isic2017", "isic2017"], "transfer[1]: 'isic2017' is listed twice"),
    ([7], "transfer[0]: expected a dataset name or {name, path, format, labels}, got 7"),
])
def test_bad_transfer_entries_are_one_line_naming_the_entry(transfer, message):
    with pytest.raises(ConfigError) as err:
        parse_spec({**BASE, "transfer": transfer}, source="x.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_declared_dataset_is_a_transfer_target_by_name_and_shows_in_the_plan(tmp_path):
    # Declared datasets are registered for the process: a name no other test declares.
    folder, _ = F.folder_png(tmp_path / "xfer-declared", n=6)
    base = {k: v for k, v in BASE.items() if k != "dataset"}
    spec = parse_spec({**base, "datasets": ["synthetic-isic", {"name": "xfer-declared", "path": str(folder)}],
                       "transfer": ["xfer-declared"]}, source="x.yaml")
    target = spec.transfer[0]
    assert (target.name, target.root, target.options["format"]) == ("xfer-declared", str(folder.resolve()), "folder")
    assert "on the test split of xfer-declared" in spec.plan()


@pytest.fixture(scope="module")
def transfer_sweep(tmp_path_factory):
    """Two models swept on synthetic-isic, their final runs also scored on a U-Bench-style folder."""
    from vmbench.sweep import run_sweep

    root = tmp_path_factory.mktemp("xfer")
    folder, truth = F.folder_png(root / "xfer-sweep-polyps", n=12)
    spec = parse_spec({**BASE, "transfer": [{"name": "xfer-sweep-polyps", "path": str(folder)}]}, source="xfer.yaml")
    result = run_sweep(spec, runs_dir=root / "runs", num_cpus=2, num_gpus=0)
    return {"root": root, "truth": truth, "result": result, "uri": result.tracking_uri}


def _final_runs(uri: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["xfer"])
    return runs[runs["tags.vmbench.stage"] == "final"]


@pytest.mark.slow  # a real sweep (Ray, 2 studies, 4 final runs): about 60 s on 2 cores
def test_final_runs_are_scored_on_the_transfer_dataset_and_tabled_as_transfer(transfer_sweep):
    from vmbench.leaderboard import leaderboard, load_runs, render
    from vmbench.leaderboard.tables import split_tables

    final = _final_runs(transfer_sweep["uri"])
    assert len(final) == 4 and set(final["status"]) == {"FINISHED"}
    assert final["tags.vmbench.transfer.xfer-sweep-polyps-test"].eq("true").all()
    truth = transfer_sweep["truth"]
    for run_dir in (transfer_sweep["root"] / "runs" / "sweeps" / "xfer" / "final").glob("*/seed*"):
        summary = json.loads((run_dir / "eval" / "xfer-sweep-polyps-test" / "summary.json").read_text())
        assert (summary["dataset"], summary["trained_on"], summary["transfer"]) == ("xfer-sweep-polyps", "synthetic-isic", True)
        cases = pd.read_csv(run_dir / "eval" / "xfer-sweep-polyps-test" / "per_case.csv")["id"].tolist()
        m = summary["metrics"]
        # Scored on the folder's own masks at each image's released size: the generator's drawing.
        assert m["tp"] + m["fn"] == sum(int(truth[c].sum()) for c in cases)
        assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == sum(truth[c].size for c in cases)

    board = leaderboard(load_runs(transfer_sweep["uri"], experiment="xfer"), reference="unet")
    moved = board[board["scored_on"] == "xfer-sweep-polyps"].set_index("model")
    own = board[(board["scored_on"] == "") & (board["kind"] == "measured")].set_index("model")
    assert sorted(moved.index) == ["ultralight-vmunet", "unet"] and (moved["n"] == 2).all()
    for model, runs in final.groupby("tags.vmbench.model"):
        # The transfer cell is the mean over seeds of the runs' transfer DSC; the own cell of their test DSC.
        assert moved.at[model, "dsc_pct_mean"] == pytest.approx(100 * runs["metrics.eval_xfer-sweep-polyps-test_dsc"].mean())
        assert moved.at[model, "own_dsc_pct_mean"] == pytest.approx(100 * runs["metrics.test_dsc"].mean())
        assert own.at[model, "dsc_pct_mean"] == pytest.approx(100 * runs["metrics.test_dsc"].mean())

    # The paired test on the transfer cases, by hand: per-case Dice averaged over seeds, paired by id.
    per_model = {}
    for model, runs in final.groupby("tags.vmbench.model"):
        frames = [pd.read_csv(Path(run.replace("file://", "")) / "eval" / "xfer-sweep-polyps-test" / "per_case.csv")
                  for run in runs["artifact_uri"]]
        per_model[model] = pd.concat(frames).groupby("id")["dice"].mean()
    diff = (per_model["ultralight-vmunet"] - per_model["unet"]).dropna()
    expected = wilcoxon(diff.to_numpy()).pvalue if np.any(diff != 0) else float("nan")
    assert moved.at["ultralight-vmunet", "wilcoxon_pairs"] == len(diff)
    assert moved.at["ultralight-vmunet", "wilcoxon_p"] == pytest.approx(expected)
    assert moved.at["ultralight-vmunet", "dsc_diff_pp"] == pytest.approx(100 * diff.mean())

    tables = split_tables(board)
    transfer = [t for t in tables if t.is_transfer]
    assert len(transfer) == 1 and transfer[0].title.startswith("synthetic-isic → xfer-sweep-polyps |")
    assert "transfer: final runs trained on synthetic-isic, scored on xfer-sweep-polyps's test split" in transfer[0].title
    assert tables.index(transfer[0]) > [t.is_transfer for t in tables].index(False)  # after the test split's table
    text = render(board, "md")
    assert "Own test DSC %" in text and "U-Bench's zero-shot axis" in text
    payload = json.loads(render(board, "json"))
    assert [t["scored_on"] for t in payload["tables"]] == [None, "xfer-sweep-polyps"]


@pytest.mark.slow  # shares the sweep above
def test_report_shows_the_transfer_table_and_says_what_it_adds(transfer_sweep, tmp_path):
    from vmbench.report import build_report

    out = build_report(transfer_sweep["uri"], "xfer", tmp_path / "report.html", reference="unet",
                       n_boot=50)
    page = Path(out).read_text()
    assert "synthetic-isic → xfer-sweep-polyps" in page
    assert "Transfer to xfer-sweep-polyps (test split, no retraining): highest mean DSC" in page
    # One verdict (the test split's): the transfer table adds a sentence, not a verdict of its own.
    assert page.count('class="verdict"') == 1


def test_missing_transfer_data_fails_before_any_trial(tmp_path, monkeypatch):
    """A transfer target's folder is checked on the driver with the swept data: the sweep fails in its
    preflight, naming the folder, instead of after hours of search when the first final run starts."""
    from vmbench.data import DataError
    from vmbench.sweep import run_sweep

    monkeypatch.chdir(tmp_path)
    folder, _ = F.folder_png(tmp_path / "xfer-gone", n=4)
    spec = parse_spec({**BASE, "transfer": [{"name": "xfer-gone", "path": str(folder)}]}, source="xfer.yaml")
    for image in (folder / "images").iterdir():
        image.unlink()  # the folder was readable when the file was checked, not when the sweep starts
    with pytest.raises(DataError, match="transfer dataset xfer-gone: .*xfer-gone"):
        run_sweep(spec, runs_dir=tmp_path / "runs", num_cpus=1, num_gpus=0)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    started = mlflow.search_runs(search_all_experiments=True)
    assert started.empty or not (started.get("tags.vmbench.stage") == "search").any()


@pytest.mark.slow  # shares the sweep above
def test_a_final_run_scored_later_with_evaluate_is_attached_to_its_run(transfer_sweep, capsys):
    """A sweep's final run folder names its MLflow run (mlflow_run.json): `vmbench evaluate --dataset`
    on its checkpoint attaches the scores there, as a transfer evaluation the leaderboard tables."""
    from vmbench.cli import main
    from vmbench.leaderboard import leaderboard, load_runs

    root = transfer_sweep["root"]
    run_dir = root / "runs" / "sweeps" / "xfer" / "final" / "synthetic-isic__unet" / "seed1"
    pointer = json.loads((run_dir / "mlflow_run.json").read_text())
    final = _final_runs(transfer_sweep["uri"])
    assert pointer["run_id"] in set(final["run_id"]) and pointer["tracking_uri"] == transfer_sweep["uri"]
    later, _ = F.folder_jpeg(root / "xfer-later", n=6)
    assert main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "best.pt"), "--dataset", str(later),
                 "--no-progress"]) == 0
    assert f"attached to MLflow run {pointer['run_id']}" in capsys.readouterr().out
    board = leaderboard(load_runs(transfer_sweep["uri"], experiment="xfer"), reference="unet")
    later_rows = board[board["scored_on"] == "xfer-later"]
    assert list(later_rows["model"]) == ["unet"] and list(later_rows["n"]) == [1]
