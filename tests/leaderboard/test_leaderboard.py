"""``vmbench leaderboard``: statistics, paired test, published rows and every output format.

Runs are logged with ``mlflow.MlflowClient`` into an SQLite store under a temporary folder, with
the tags, metrics and ``eval/per_case.csv`` artifact of the tracking contract
(``vmbench.tracking``). Expected values are computed by hand here, never with the code under
test.
"""

from __future__ import annotations

import importlib.util
import json
import math
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow_store import (  # noqa: E402  (tests/mlflow_store.py)
    COST,
    CV_DSC,
    CV_FINAL_COST,
    CV_POOL_IDS,
    CV_SEEDS,
    CV_TEST,
    CV_TEST_IDS,
    CV_VAL,
    Store,
    _exact_wilcoxon_two_sided,
    _frame,
    _isic_case,
    _isic_metrics,
    build_cv_store,
)

from vmbench import leaderboard as lb  # noqa: E402
from vmbench import tracking  # noqa: E402
from vmbench.cli import main  # noqa: E402
from vmbench.errors import ConfigError, DataError  # noqa: E402
from vmbench.protocols import PROTOCOLS  # noqa: E402


def _benchmark_module():
    """``benchmarks/leaderboard_scale.py`` (a script, not a package), for its ``synthetic_runs``."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "leaderboard_scale.py"
    spec = importlib.util.spec_from_file_location("leaderboard_scale", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# MLflow 3.17's SQL store triggers a SQLAlchemy deprecation warning on first use.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

ORGANS = ("aorta", "gallbladder", "kidney_l", "kidney_r", "liver", "pancreas", "spleen", "stomach")


# --------------------------------------------------------------------------------------------
# Fixture store
# --------------------------------------------------------------------------------------------


def _t975_df2() -> float:
    # Student t with 2 degrees of freedom has a closed-form quantile: t = (2p - 1) / sqrt(2 p (1 - p)).
    p = 0.975
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def _logit_t_by_hand(fractions: list[float]) -> tuple[float, float]:
    """t-interval (3 values: t(0.975, 2)) of the mean logit, mapped back with the logistic function."""
    assert len(fractions) == 3
    z = [math.log(f / (1 - f)) for f in fractions]
    mean = sum(z) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in z) / 2)
    half = _t975_df2() * sd / math.sqrt(3)
    return 1 / (1 + math.exp(-(mean - half))), 1 / (1 + math.exp(-(mean + half)))


ISIC_IDS = ["ISIC_001", "ISIC_002", "ISIC_003", "ISIC_004", "ISIC_005", "ISIC_006"]
VM_SEED0 = [0.70, 0.80, 0.60, 0.90, 0.50, 0.75]
VM_SEED1 = [0.72, 0.78, 0.62, 0.88, 0.52, 0.77]  # seed mean: 0.71 0.79 0.61 0.89 0.51 0.76
UNET_GAIN = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]


SYN_CASES = ["case0001", "case0002", "case0003", "case0004", "case0005", "case0006", "case0007"]
SYN_DIFFS = [0.01, -0.02, 0.03, 0.04, -0.05, 0.06, 0.07]  # per-case differences swin - vmunet


def _synapse_case(case_means: list[float]) -> pd.DataFrame:
    rows = []
    for case, mean in zip(SYN_CASES, case_means):
        offsets = np.linspace(-0.07, 0.07, len(ORGANS))  # symmetric: organ mean == `mean`
        for k, (organ, off) in enumerate(zip(ORGANS, offsets), start=1):
            rows.append({
                "id": case, "class": k, "organ": organ, "dice": mean + off, "hd95": 10.0 + k,
                "dice_strict": mean + off, "hd95_strict": 12.0 + k,
            })
    return pd.DataFrame(rows)


def _synapse_metrics(dsc: float, hd95: float) -> dict[str, float]:
    m = {"test_dsc": dsc, "test_hd95": hd95, "test_dsc_strict": dsc - 0.01, "test_hd95_strict": hd95 + 5}
    for k, organ in enumerate(ORGANS):
        m[f"test_dsc_{organ}"] = dsc + (k - 3.5) / 100
        m[f"test_hd95_{organ}"] = hd95 + k
    m.update(COST, train_time_s=7200.0, device_hours=2.0)
    return m


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store(tmp_path_factory.mktemp("mlflow"))
    # ISIC 2018, holdout: vmunet 3 seeds (dsc 0.80 0.82 0.87), one failed, one still running.
    s.log("vmunet", "isic2018", "holdout", 0, _isic_metrics(0.80, 3600, 1.0), per_case=_isic_case(ISIC_IDS, VM_SEED0))
    s.log("vmunet", "isic2018", "holdout", 1, _isic_metrics(0.82, 7200, 2.0), per_case=_isic_case(ISIC_IDS, VM_SEED1))
    s.log("vmunet", "isic2018", "holdout", 2, _isic_metrics(0.87, 10800, 3.0))  # no per-case CSV
    s.log("vmunet", "isic2018", "holdout", 3, _isic_metrics(0.10, 1, 0.1), status="FAILED")
    s.log("vmunet", "isic2018", "holdout", 4, _isic_metrics(0.10, 1, 0.1), status="RUNNING")
    # A search-stage trial: never a leaderboard row.
    s.log("vmunet", "isic2018", "holdout", 0, _isic_metrics(0.05, 1, 0.1), stage="search")
    # unet, a single seed; case order reversed and one extra case.
    ref_mean = [(a + b) / 2 for a, b in zip(VM_SEED0, VM_SEED1)]
    unet = [m + g for m, g in zip(ref_mean, UNET_GAIN)]
    s.log(
        "unet", "isic2018", "holdout", 0, _isic_metrics(0.85, 1800, 0.5),
        per_case=_isic_case(ISIC_IDS[::-1] + ["ISIC_999"], unet[::-1] + [0.99]),
    )
    # att-unet whose case ids share nothing with vmunet's.
    s.log("att-unet", "isic2018", "holdout", 0, _isic_metrics(0.83, 1800, 0.5), per_case=_isic_case(["X1", "X2"], [0.5, 0.6]))
    # Synapse, paper protocol, selection on the test split (val_is_test): swin-unet vs vmunet.
    vm_syn = [0.80, 0.70, 0.75, 0.85, 0.65, 0.78, 0.72]
    swin_syn = [v + d for v, d in zip(vm_syn, SYN_DIFFS)]
    s.log("vmunet", "synapse", "paper", 0, _synapse_metrics(0.81, 19.0), per_case=_synapse_case(vm_syn), val_is_test=True)
    s.log("swin-unet", "synapse", "paper", 0, _synapse_metrics(0.79, 21.0), per_case=_synapse_case(swin_syn), val_is_test=True)
    # ISIC 2017 with no reference model at all, in a second experiment.
    s.log("unet", "isic2017", "holdout", 0, _isic_metrics(0.84, 1800, 0.5), experiment="other-exp")
    return s


def run_cli(argv: list[str]) -> int:
    return main(["leaderboard", *argv])


def _row(board: pd.DataFrame, dataset: str, model: str, kind: str = "measured") -> pd.Series:
    rows = board[(board["dataset"] == dataset) & (board["model"] == model) & (board["kind"] == kind)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


@pytest.fixture(scope="module")
def board(store) -> pd.DataFrame:
    return lb.leaderboard(lb.load_runs(store.uri), reference="vmunet")


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def test_means_std_ci_and_counts_by_hand(board):
    vm = _row(board, "isic2018", "vmunet")
    assert vm["protocol"] == "holdout"
    assert vm["n"] == 3 and vm["failed"] == 1 and vm["running"] == 1 and vm["seeds"] == 3
    # DSC in percent: 80, 82, 87 -> mean 83, squared deviations 9 + 1 + 16 = 26, variance 26/2.
    std = math.sqrt(13.0)
    assert vm["dsc_pct_mean"] == pytest.approx(83.0)
    assert vm["dsc_pct_std"] == pytest.approx(std)
    # 95% CI: t-interval on the logit scale of the fractions, mapped back (written out here).
    lo, hi = _logit_t_by_hand([0.80, 0.82, 0.87])
    assert vm["dsc_pct_ci_lo"] == pytest.approx(100 * lo)
    assert vm["dsc_pct_ci_hi"] == pytest.approx(100 * hi)
    assert 0 < vm["dsc_pct_ci_lo"] < 80 and 87 < vm["dsc_pct_ci_hi"] < 100
    assert _t975_df2() == pytest.approx(4.303, abs=1e-3)  # table value t(0.975, 2)
    assert vm["miou_pct_mean"] == pytest.approx(73.0)
    # Cost: parameters, GMACs, mean training time and device-hours, latency.
    assert vm["n_params"] == 27_427_561 and vm["gmacs"] == pytest.approx(4.11)
    assert vm["train_time_s_mean"] == pytest.approx(7200.0)
    assert vm["device_hours_mean"] == pytest.approx(2.0) and vm["device_hours_total"] == pytest.approx(6.0)
    assert vm["latency_ms_mean"] == pytest.approx(12.0)
    assert vm["hardware"] == "NVIDIA H100 (cuda:0)"


def test_single_seed_has_no_std_or_ci(board):
    unet = _row(board, "isic2018", "unet")
    assert unet["n"] == 1 and unet["dsc_pct_mean"] == pytest.approx(85.0)
    assert math.isnan(unet["dsc_pct_std"]) and math.isnan(unet["dsc_pct_ci_lo"])
    table = next(t for t in lb.split_tables(board) if t.dataset == "isic2018")
    shown = lb.display_frame(table, "vmunet")
    cell = shown.loc[shown["Model"] == "unet"].iloc[0]
    assert cell["DSC %"] == "85.00" and cell["DSC % 95% CI"] == "–"


def test_search_and_failed_runs_never_enter_means(store):
    runs = lb.load_runs(store.uri, dataset="isic2018", model="vmunet")
    assert set(runs["tags.vmbench.stage"]) == {"final"}
    assert sorted(runs["status"]) == ["FAILED", "FINISHED", "FINISHED", "FINISHED", "RUNNING"]
    search = lb.load_runs(store.uri, dataset="isic2018", model="vmunet", stage="search")
    assert len(search) == 1 and search["metrics.test_dsc"].iloc[0] == pytest.approx(0.05)


def test_synapse_units_and_columns(board):
    vm = _row(board, "synapse", "vmunet")
    assert vm["protocol"] == "paper"
    assert vm["dsc_pct_mean"] == pytest.approx(81.0)
    assert vm["hd95_vox_mean"] == pytest.approx(19.0)  # voxels: not scaled
    assert vm["hd95_strict_vox_mean"] == pytest.approx(24.0)
    assert vm["dsc_liver_pct_mean"] == pytest.approx(81.5)
    table = next(t for t in lb.split_tables(board) if t.dataset == "synapse")
    assert table.metrics[:2] == ["dsc", "hd95"]
    assert [k for k in table.metrics if k.startswith("dsc_") and k != "dsc_strict"] == [f"dsc_{o}" for o in ORGANS]
    assert "dsc_strict" in table.metrics and "hd95_strict" in table.metrics
    headers = list(lb.display_frame(table, "vmunet").columns)
    assert "DSC %" in headers and "HD95 vox" in headers and "Liver %" in headers


def test_load_runs_types_filters_and_experiments(store):
    runs = lb.load_runs(store.uri, params=True)
    assert runs["metrics.test_dsc"].dtype == "float64"
    assert str(runs["start_time"].dtype).startswith("datetime64") and str(runs["start_time"].dt.tz) == "UTC"
    assert runs["params.optim.lr"].dtype == "float64"  # params arrive as strings: cast
    assert pd.api.types.is_string_dtype(runs["params.model.name"])  # non-numeric params stay text
    assert "sweep" not in set(runs["tags.vmbench.kind"])  # the parent run is not a trial
    both = lb.load_runs(store.uri, model=["unet", "att-unet"], dataset="isic2018")
    assert sorted(both["tags.vmbench.model"]) == ["att-unet", "unet"]
    other = lb.load_runs(store.uri, experiment="other-exp")
    assert list(other["tags.vmbench.dataset"]) == ["isic2017"]
    with pytest.raises(ValueError, match="no MLflow experiment named 'nope'"):
        lb.load_runs(store.uri, experiment="nope")


def test_aggregates_10000_synthetic_runs():
    runs = _benchmark_module().synthetic_runs(10_000)
    board = lb.leaderboard(runs, per_case_loader=False)
    measured = board[board["kind"] == "measured"]
    assert len(measured) == 5 * 3 * 2  # models x datasets x protocols
    assert measured["n"].sum() == (runs["status"] == "FINISHED").sum()
    assert measured["failed"].sum() == (runs["status"] == "FAILED").sum()
    group = runs[(runs["tags.vmbench.model"] == "unet") & (runs["tags.vmbench.dataset"] == "synapse")
                 & (runs["tags.vmbench.protocol"] == "paper") & (runs["status"] == "FINISHED")]
    row = _row(measured[measured["protocol"] == "paper"], "synapse", "unet")
    values = group["metrics.test_dsc"].to_numpy() * 100
    assert row["dsc_pct_mean"] == pytest.approx(sum(values) / len(values))
    assert (board[board["kind"] == "published"]["n"].isna()).all()


# --------------------------------------------------------------------------------------------
# Paired test
# --------------------------------------------------------------------------------------------


def test_wilcoxon_all_positive_exact_p_paired_by_id(board):
    unet = _row(board, "isic2018", "unet")
    # 6 paired cases (ISIC_999 has no partner), all differences positive: p = 2 / 2^6.
    assert unet["wilcoxon_pairs"] == 6
    assert unet["wilcoxon_p"] == pytest.approx(2 / 2**6)
    assert unet["dsc_diff_pp"] == pytest.approx(100 * sum(UNET_GAIN) / 6)
    assert "1 unpaired" in unet["note"]
    assert "missing for 1 of 3" in unet["note"]  # vmunet seed 2 has no per-case CSV
    assert _row(board, "isic2018", "vmunet")["note"] == "reference"


def test_wilcoxon_synapse_mixed_signs_matches_enumeration(board):
    swin = _row(board, "synapse", "swin-unet")
    assert swin["wilcoxon_pairs"] == len(SYN_CASES)
    expected = _exact_wilcoxon_two_sided(SYN_DIFFS)
    assert expected == pytest.approx(0.296875)  # 2 * 19/128
    assert swin["wilcoxon_p"] == pytest.approx(expected)
    assert swin["dsc_diff_pp"] == pytest.approx(100 * sum(SYN_DIFFS) / len(SYN_DIFFS))


def test_wilcoxon_skips_with_clear_notes(board):
    att = _row(board, "isic2018", "att-unet")
    assert math.isnan(att["wilcoxon_p"]) and "no case ids shared" in att["note"]
    lone = _row(board, "isic2017", "unet")
    assert math.isnan(lone["wilcoxon_p"]) and "reference 'vmunet' has no finished runs" in lone["note"]


def test_per_case_files_are_downloaded_once_per_run(store):
    runs = lb.load_runs(store.uri, dataset="isic2018")
    calls: list[str] = []
    inner = lb.MlflowPerCaseLoader(store.uri)

    def loader(run_id):
        calls.append(run_id)
        return inner(run_id)

    lb.leaderboard(runs, per_case_loader=loader)
    assert len(calls) == len(set(calls))  # each run's CSV fetched once, even when reused as reference
    lb.leaderboard(runs, per_case_loader=False, with_published=False)  # no loader: no downloads
    assert inner(calls[0]) is inner(calls[0])  # cached frame


# --------------------------------------------------------------------------------------------
# Published rows
# --------------------------------------------------------------------------------------------


def test_published_rows_marked_for_their_dataset_only(board):
    pub = board[board["kind"] == "published"]
    assert set(pub["dataset"]) == {"isic2017", "isic2018", "synapse"}  # only measured datasets
    vm18 = _row(board, "isic2018", "vmunet", kind="published")
    assert vm18["protocol"] == "paper" and "VM-UNet paper Table I" in vm18["source"]
    assert vm18["dsc_pct_mean"] == pytest.approx(89.71) and vm18["miou_pct_mean"] == pytest.approx(81.35)
    assert pd.isna(vm18["n"]) and pd.isna(vm18["dsc_pct_std"])
    # Never averaged: the measured vmunet row is the mean of its three seeds only.
    assert _row(board, "isic2018", "vmunet")["dsc_pct_mean"] == pytest.approx(83.0)
    syn = _row(board, "synapse", "vmunet", kind="published")
    assert syn["dsc_pct_mean"] == pytest.approx(81.08) and syn["hd95_vox_mean"] == pytest.approx(19.21)
    tables = {(t.dataset, t.protocol): t for t in lb.split_tables(board)}
    isic = tables[("isic2018", "holdout")].rows
    assert set(isic.loc[isic["kind"] == "published", "dataset"]) == {"isic2018"}
    shown = lb.display_frame(tables[("isic2018", "holdout")], "vmunet")
    assert "vmunet [published]" in set(shown["Model"])
    assert any("VM-UNet paper Table I" in s for s in shown["Source"])
    no_pub = lb.leaderboard(lb.load_runs(store_uri(board)), with_published=False, per_case_loader=False)
    assert (no_pub["kind"] == "measured").all()


def store_uri(board: pd.DataFrame) -> str:
    return board.attrs["tracking_uri"]


# --------------------------------------------------------------------------------------------
# Output formats through the sub-command
# --------------------------------------------------------------------------------------------


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.headings, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th", "h2"):
            self._in = tag
            if tag == "h2":
                self.headings.append("")
            else:
                self.tables[-1][-1].append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th", "h2"):
            self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.headings[-1] += data
        elif self._in:
            self.tables[-1][-1][-1] += data


def test_every_format_parses_and_names_the_protocol(store, tmp_path, capsys):
    base = ["--tracking-uri", store.uri, "--dataset", "isic2018"]
    outputs = {}
    for fmt, suffix in (("md", "md"), ("csv", "csv"), ("html", "html"), ("latex", "tex"), ("json", "json")):
        path = tmp_path / f"board.{suffix}"
        assert run_cli([*base, "--out", str(path)]) == 0  # format from the suffix
        outputs[fmt] = path.read_text()
        assert not list(tmp_path.glob(".*tmp"))  # temp file renamed away

    md = outputs["md"]
    assert "protocol: holdout" in md
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table_lines}) == 1  # one rectangular tabulate table
    assert "DSC %" in table_lines[0] and any("vmunet [published]" in line for line in table_lines)
    assert any(line.startswith("| vmunet ") and "83.00 ± 3.61" in line for line in table_lines)

    csv = pd.read_csv(StringIO(outputs["csv"]))
    assert set(csv["protocol"]) == {"holdout", "paper"}  # measured rows holdout, published rows paper
    vm = csv[(csv["model"] == "vmunet") & (csv["kind"] == "measured")].iloc[0]
    assert vm["dsc_pct_mean"] == pytest.approx(83.0) and vm["n"] == 3 and vm["failed"] == 1

    parsed = _Tables()
    parsed.feed(outputs["html"])
    assert len(parsed.tables) == 1 and "protocol: holdout" in parsed.headings[0]
    header, *rows = parsed.tables[0]
    assert "DSC %" in header and {r[0] for r in rows} >= {"vmunet", "unet", "att-unet", "vmunet [published]"}

    tex = outputs["latex"]
    assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex and "protocol: holdout" in tex
    assert "vmunet & 3 & " in tex and "83.00 $\\pm$ 3.61" in tex and "DSC \\%" in tex

    payload = json.loads(outputs["json"])
    (table,) = payload["tables"]
    assert table["protocol"] == "holdout" and "protocol: holdout" in table["title"]
    vm_json = next(r for r in table["rows"] if r["model"] == "vmunet" and r["kind"] == "measured")
    assert vm_json["dsc_pct_mean"] == pytest.approx(83.0) and vm_json["dsc_pct_std"] == pytest.approx(math.sqrt(13))
    assert vm_json["wilcoxon_p"] is None

    # Standard output with --format.
    assert run_cli([*base, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["tables"][0]["protocol"] == "holdout"


def test_terminal_table_and_test_split_warning(store, capsys):
    assert run_cli(["--tracking-uri", store.uri, "--dataset", "synapse"]) == 0
    out = capsys.readouterr().out
    assert "synapse | protocol: paper" in out
    assert "WARNING: 2 of 2 runs selected their checkpoint on the test split" in out
    assert "swin-unet" in out and "vmunet [published]" in out and "HD95 vox" in out
    # The warning is in every format.
    assert run_cli(["--tracking-uri", store.uri, "--dataset", "synapse", "--format", "md"]) == 0
    assert "optimistic" in capsys.readouterr().out


def test_plot_writes_png(store, tmp_path):
    png = tmp_path / "board.png"
    assert run_cli(["--tracking-uri", store.uri, "--no-wilcoxon", "--format", "csv", "--out", str(tmp_path / "b.csv"), "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_empty_result_is_one_message_and_status_2(store, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert run_cli(["--tracking-uri", store.uri, "--dataset", "kvasir"]) == 2
    err = capsys.readouterr().err
    assert "no finished vmbench runs" in err and "dataset=kvasir" in err and store.uri in err
    assert "Traceback" not in err
    missing = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert run_cli(["--tracking-uri", missing]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # reading never creates a store


def test_only_failed_runs_are_reported(store, capsys):
    store.log("transfuse-s", "polyp", "paper", 0, _isic_metrics(0.5, 1, 0.1), status="FAILED", experiment="failed-only")
    assert run_cli(["--tracking-uri", store.uri, "--experiment", "failed-only"]) == 2
    assert "1 failed/killed" in capsys.readouterr().err


def test_stage_search_for_inspection(store, capsys):
    assert run_cli(["--tracking-uri", store.uri, "--stage", "search", "--format", "text", "--no-published"]) == 0
    out = capsys.readouterr().out
    assert "search runs" in out and "not a leaderboard" in out


def test_metric_selection_and_model_filter(store, board):
    runs = lb.load_runs(store.uri, dataset="synapse", model="swin-unet")
    chosen = lb.leaderboard(runs, metrics=["dsc", "hd95_liver"], per_case_loader=False, published_models=["swin-unet"])
    (table,) = lb.split_tables(chosen)
    assert table.metrics == ["dsc", "hd95_liver"]
    assert _row(chosen, "synapse", "swin-unet")["hd95_liver_vox_mean"] == pytest.approx(25.0)
    assert set(chosen.loc[chosen["kind"] == "published", "model"]) == {"swin-unet"}
    # Paired test switched off: no p-value column, no claim about it.
    assert "p vs" not in lb.render(chosen, "md") and "Wilcoxon" not in lb.render(chosen, "md")
    assert math.isnan(_row(chosen, "synapse", "swin-unet")["wilcoxon_p"])


def test_sql_fast_path_reads_what_mlflow_returns(store):
    for kwargs in ({}, {"dataset": "isic2018", "model": "vmunet"}, {"stage": "all"}, {"experiment": "other-exp"}):
        via_mlflow = lb.load_runs(store.uri, engine="mlflow", params=True, **kwargs).sort_values("run_id", ignore_index=True)
        via_sql = lb.load_runs(store.uri, engine="sql", params=True, **kwargs).sort_values("run_id", ignore_index=True)
        assert len(via_mlflow) > 0
        assert sorted(via_mlflow.columns) == sorted(via_sql.columns)
        pd.testing.assert_frame_equal(via_sql[via_mlflow.columns], via_mlflow, check_dtype=False)
    with pytest.raises(ValueError, match="sqlite"):
        lb.load_runs("http://127.0.0.1:9", engine="sql")


def test_print_for_sweep_prints_one_experiment_and_never_raises(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = StringIO()
    assert lb.print_for_sweep(store.uri, "other-exp", file=out) is True
    text = out.getvalue()
    assert "isic2017 | protocol: holdout" in text and "isic2018 |" not in text
    out = StringIO()
    assert lb.print_for_sweep(store.uri, "no-such-experiment", file=out) is False
    assert out.getvalue().startswith("(leaderboard failed: ConfigError: no MLflow experiment named")
    out = StringIO()
    assert lb.print_for_sweep(None, "x", runs_dir=tmp_path / "runs", file=out) is False
    assert "no MLflow store" in out.getvalue() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------
# Review fixes: ASHA-stopped trials, published rows of another protocol
# --------------------------------------------------------------------------------------------


def test_search_stage_leaves_out_asha_pruned_trials(tmp_path, capsys):
    from vmbench.tracking import COMPLETED, PRUNED, TAG_OUTCOME

    s = Store(tmp_path)
    # Two trials that ran the full budget (val DSC 0.80, 0.82) and one ASHA stopped after a few
    # epochs: FINISHED like the others, told apart only by its outcome tag.
    for seed, dsc, outcome in ((0, 0.80, COMPLETED), (1, 0.82, COMPLETED), (2, 0.30, PRUNED)):
        run_id = s.log("vmunet", "isic2018", "holdout", seed, {"val_dsc": dsc}, stage="search")
        s.client.set_tag(run_id, TAG_OUTCOME, outcome)
    board = lb.leaderboard(lb.load_runs(s.uri, stage="search"), stage="search", per_case_loader=False, with_published=False)
    row = _row(board, "isic2018", "vmunet")
    assert row["n"] == 2 and row["pruned"] == 1 and row["failed"] == 0 and row["running"] == 0
    assert row["dsc_pct_mean"] == pytest.approx(81.0)  # not (80 + 82 + 30) / 3
    (table,) = lb.split_tables(board)
    assert any("1 search trials stopped early (ASHA" in n for n in table.notes)
    assert run_cli(["--tracking-uri", s.uri, "--stage", "search", "--format", "text", "--no-published"]) == 0
    out = capsys.readouterr().out
    assert "Pruned" in out and "vmbench.outcome=pruned" in out and "81.00 ± 1.41" in out


def test_all_pruned_search_is_one_message(tmp_path, capsys):
    from vmbench.tracking import PRUNED, TAG_OUTCOME

    s = Store(tmp_path)
    run_id = s.log("vmunet", "isic2018", "holdout", 0, {"val_dsc": 0.3}, stage="search")
    s.client.set_tag(run_id, TAG_OUTCOME, PRUNED)
    assert run_cli(["--tracking-uri", s.uri, "--stage", "search"]) == 2
    assert "1 ASHA-stopped trials left out" in capsys.readouterr().err


def test_final_stage_ignores_the_outcome_tag_of_search_trials(board):
    # The fixture's search trial has no outcome tag; final rows are unchanged by the pruned rule.
    vm = _row(board, "isic2018", "vmunet")
    assert vm["n"] == 3 and vm["pruned"] == 0


def test_published_p2_row_is_not_in_the_p1_table(tmp_path, capsys):
    import vmbench

    s = Store(tmp_path)
    s.log("unet", "isic2017", "paper", 0, _isic_metrics(0.84, 1800, 0.5))
    board = lb.leaderboard(lb.load_runs(s.uri), per_case_loader=False)
    tables = {(t.dataset, t.protocol): t for t in lb.split_tables(board)}
    assert list(tables) == [("isic2017", "paper"), ("isic2017", "paper-p2")]
    # P1 table: TransFuse's pooled 256x256 row only, never the P2 per-image number.
    p1 = tables[("isic2017", "paper")].rows
    tf = p1[p1["model"] == "transfuse-s"]
    assert list(tf["protocol"]) == ["paper"] and tf["dsc_pct_mean"].tolist() == [pytest.approx(88.40)]
    assert not (p1["kind"].eq("published") & p1["per_image_dice_pct_mean"].notna()).any()
    # P2 has a table of its own, named by its protocol, with published rows only.
    p2 = tables[("isic2017", "paper-p2")]
    assert (p2.rows["kind"] == "published").all() and list(p2.rows["model"]) == ["transfuse-s"]
    assert p2.rows["per_image_dice_pct_mean"].tolist() == [pytest.approx(87.2)]
    assert "P2" in p2.title and "600-image" in p2.title and "published results only" in p2.title
    assert any("not comparable" in n for n in p2.notes)
    # A --protocol filter without paper-p2 leaves that table out; naming it keeps it.
    assert run_cli(["--tracking-uri", s.uri, "--protocol", "paper", "--format", "md", "--no-wilcoxon"]) == 0
    assert "paper-p2" not in capsys.readouterr().out
    argv = ["--tracking-uri", s.uri, "--protocol", "paper,paper-p2", "--format", "md", "--no-wilcoxon"]
    assert run_cli(argv) == 0
    assert "protocol: paper-p2" in capsys.readouterr().out
    # Every registry protocol label has a description for the table titles.
    labels = {r.protocol for m in vmbench.list_models() for r in vmbench.model_info(m).published}
    assert labels <= set(PROTOCOLS)


# --------------------------------------------------------------------------------------------
# Restructuring fixes: --stage all counts, registry failures, unregistered datasets, user errors
# --------------------------------------------------------------------------------------------


def test_stage_all_counts_only_the_runs_whose_metrics_are_shown(store, capsys):
    # Three final runs (test DSC 0.80, 0.82, 0.87) and search trials of the same group, which log
    # val_* metrics only: one finished, one failed, one stopped by ASHA.
    rows = [{"metrics": {"test_dsc": d, "val_dsc": d}} for d in (0.80, 0.82, 0.87)]
    rows += [
        {"stage": "search", "metrics": {"val_dsc": 0.5}},
        {"stage": "search", "status": "FAILED", "metrics": {"val_dsc": 0.4}},
        {"stage": "search", "outcome": tracking.PRUNED, "metrics": {"val_dsc": 0.3}},
    ]
    board = lb.leaderboard(_frame(rows), stage=None, per_case_loader=False, with_published=False)
    row = _row(board, "isic2018", "vmunet")
    assert row["dsc_pct_mean"] == pytest.approx(83.0)
    assert (row["n"], row["failed"], row["running"], row["pruned"]) == (3, 0, 0, 0)
    (table,) = lb.split_tables(board)
    assert "final runs only" in table.title
    assert any("only final runs log test_*" in n and "3 runs of other stages left out" in n for n in table.notes)
    # Through the sub-command: the fixture's search trial even carries test_* metrics (DSC 0.05);
    # it is neither counted nor averaged.
    argv = ["--tracking-uri", store.uri, "--stage", "all", "--dataset", "isic2018", "--model", "vmunet"]
    assert run_cli([*argv, "--format", "csv", "--no-published"]) == 0
    vm = pd.read_csv(StringIO(capsys.readouterr().out)).iloc[0]
    assert (vm["n"], vm["failed"], vm["running"], vm["pruned"]) == (3, 1, 1, 0)
    assert vm["dsc_pct_mean"] == pytest.approx(83.0)


def test_registry_failures_other_than_an_unknown_name_propagate(monkeypatch):
    import vmbench

    runs = _frame([{"metrics": {"test_dsc": 0.8}}])

    def broken(name):
        raise RuntimeError("plug-in exploded")

    with monkeypatch.context() as m:
        m.setattr(vmbench, "dataset_info", broken)
        with pytest.raises(RuntimeError, match="plug-in exploded"):
            lb.leaderboard(runs, per_case_loader=False, with_published=False)
    with monkeypatch.context() as m:
        m.setattr(vmbench, "model_info", broken)
        with pytest.raises(RuntimeError, match="plug-in exploded"):
            lb.leaderboard(runs, per_case_loader=False)
    # A model name that no installed package registers is expected (a --model filter): no rows.
    board = lb.leaderboard(runs, per_case_loader=False, published_models=["not-installed"])
    assert (board["kind"] == "measured").all()


def test_unregistered_dataset_gets_the_kind_its_metrics_show_and_a_note():
    volume = {"test_dsc": 0.7, "test_hd95": 20.0, "test_dsc_strict": 0.69, "test_hd95_strict": 25.0, "test_dsc_liver": 0.9}
    rows = [
        {"dataset": "ct-plugin", "metrics": volume},
        {"dataset": "synapse-like-2d", "metrics": {"test_dsc": 0.8, "test_miou": 0.7}},
        {"dataset": "isic2018", "metrics": {"test_dsc": 0.8, "test_miou": 0.7}},
    ]
    board = lb.leaderboard(_frame(rows), per_case_loader=False, with_published=False)
    tables = {t.dataset: t for t in lb.split_tables(board)}
    assert _row(board, "ct-plugin", "vmunet")["evaluation"] == "volume"  # HD95 logged: per-volume evaluation
    assert tables["ct-plugin"].metrics == ["dsc", "hd95", "dsc_liver", "dsc_strict", "hd95_strict"]
    assert any("'ct-plugin' is not registered" in n and "'volume'" in n for n in tables["ct-plugin"].notes)
    # The kind comes from the metrics, never from the name.
    assert _row(board, "synapse-like-2d", "vmunet")["evaluation"] == "pooled2d"
    assert tables["synapse-like-2d"].metrics == ["miou", "dsc"]
    assert any("'synapse-like-2d' is not registered" in n for n in tables["synapse-like-2d"].notes)
    assert not any("not registered" in n for n in tables["isic2018"].notes)
    assert "'ct-plugin' is not registered" in lb.render(board, "md")


def test_user_errors_are_vmbench_errors_naming_the_option(store, tmp_path, capsys):
    with pytest.raises(ConfigError, match="engine 'fast'"):
        lb.load_runs(store.uri, engine="fast")
    with pytest.raises(ConfigError, match="sqlite"):
        lb.load_runs("http://127.0.0.1:9", engine="sql")
    with pytest.raises(ConfigError, match="--experiment"):
        lb.load_runs(store.uri, experiment="nope")
    with pytest.raises(DataError, match="no MLflow store at"):
        lb.load_runs(f"sqlite:///{tmp_path / 'none.db'}")
    runs = lb.load_runs(store.uri, dataset="isic2018")
    with pytest.raises(ConfigError, match="--metrics hd59"):
        lb.leaderboard(runs, metrics=["dsc", "hd59"], per_case_loader=False)
    with pytest.raises(ConfigError, match="format 'pdf'"):
        lb.render(lb.leaderboard(runs, per_case_loader=False), "pdf")
    capsys.readouterr()
    assert run_cli(["--tracking-uri", store.uri, "--metrics", "dsc,hd59", "--no-wilcoxon"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metrics hd59" in err and "test_hd59" in err
    assert run_cli(["--tracking-uri", store.uri, "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MLflow experiment named 'nope'" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------
# Rigorous comparison: Holm, bounded intervals, protocol cv, rankings, budget audit
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cv_store(tmp_path_factory) -> Store:
    return build_cv_store(tmp_path_factory.mktemp("cv"))


@pytest.fixture(scope="module")
def cv_board(cv_store) -> pd.DataFrame:
    return lb.leaderboard(lb.load_runs(cv_store.uri), reference="vmunet", with_published=False,
                          budget=lb.audit_store(cv_store.uri))


def _t975(df: int) -> float:
    """Student-t 97.5 % quantile in closed form: df 1 (Cauchy) and df 2."""
    return {1: math.tan(math.pi * 0.475), 2: _t975_df2()}[df]


def _holm_by_hand(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment written out: sort, multiply by m, m-1, ..., running max, cap at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def test_cv_rows_pool_folds_and_seeds(cv_board):
    import statistics as stdlib

    unet = _row(cv_board, "isic2018", "unet")
    assert (unet["protocol"], unet["n"], unet["folds"], unet["seeds"]) == ("cv", 6, 3, 2)
    runs = [100 * (CV_DSC["unet"] + 0.01 * f + 0.02 * s) for f in range(3) for s in CV_SEEDS]
    assert unet["dsc_pct_mean"] == pytest.approx(stdlib.mean(runs))
    assert unet["dsc_pct_std"] == pytest.approx(stdlib.stdev(runs))
    # CI over seeds of the fold-averaged score: 0.84 and 0.86, logit-t with one degree of freedom.
    seed_means = [CV_DSC["unet"] + 0.01 + 0.02 * s for s in CV_SEEDS]
    z = [math.log(v / (1 - v)) for v in seed_means]
    half = _t975(1) * stdlib.stdev(z) / math.sqrt(2)
    assert unet["dsc_pct_ci_lo"] == pytest.approx(100 / (1 + math.exp(-(stdlib.mean(z) - half))))
    assert unet["dsc_pct_ci_hi"] == pytest.approx(100 / (1 + math.exp(-(stdlib.mean(z) + half))))
    (table,) = lb.split_tables(cv_board)
    assert any("folds x seeds" in n and "not independent" in n for n in table.notes)
    shown = lb.display_frame(table, "vmunet")
    assert list(shown.loc[shown["Model"] == "unet", "Folds"]) == ["3"]


def test_cv_paired_tests_average_folds_and_seeds_and_holm(cv_board):
    unet, att = _row(cv_board, "isic2018", "unet"), _row(cv_board, "isic2018", "att-unet")
    d_unet = [a - b for a, b in zip(CV_TEST["unet"], CV_TEST["vmunet"])]
    d_att = [a - b for a, b in zip(CV_TEST["att-unet"], CV_TEST["vmunet"])]
    p_unet, p_att = _exact_wilcoxon_two_sided(d_unet), _exact_wilcoxon_two_sided(d_att)
    assert p_unet == pytest.approx(2 / 2**6)
    assert unet["wilcoxon_p"] == pytest.approx(p_unet) and att["wilcoxon_p"] == pytest.approx(p_att)
    assert unet["wilcoxon_pairs"] == 6 and unet["dsc_diff_pp"] == pytest.approx(100 * sum(d_unet) / 6)
    holm_unet, holm_att = _holm_by_hand([p_unet, p_att])
    assert unet["wilcoxon_p_holm"] == pytest.approx(holm_unet) and att["wilcoxon_p_holm"] == pytest.approx(holm_att)
    assert holm_unet == pytest.approx(2 * p_unet)  # the smaller p is multiplied by m = 2
    (table,) = lb.split_tables(cv_board)
    assert any("Holm" in n and "2 comparisons" in n for n in table.notes)
    shown = lb.display_frame(table, "vmunet")
    assert "p Holm" in shown.columns and list(shown.loc[shown["Model"] == "vmunet", "p Holm"]) == ["ref"]


def test_holm_over_the_comparisons_of_each_table_only():
    # In memory: three challengers against vmunet on 7 cases, a fourth table (isic2017) apart.
    cases = [f"c{i}" for i in range(7)]
    ref = [0.5 + 0.05 * i for i in range(7)]
    gains = {"unet": [0.01 * (i + 1) for i in range(7)], "att-unet": [0.02, -0.01, 0.03, 0.015, -0.05, 0.04, 0.06],
             "swin-unet": [-0.01, 0.02, -0.03, 0.04, -0.05, 0.06, -0.07]}
    tables = {"r0": _isic_case(cases, ref)}
    rows = [{"model": "vmunet", "metrics": {"test_dsc": 0.8}}]
    for i, (model, g) in enumerate(gains.items(), start=1):
        tables[f"run{i}"] = _isic_case(cases, [a + b for a, b in zip(ref, g)])
        rows.append({"model": model, "metrics": {"test_dsc": 0.8}})
    rows.append({"model": "unet", "dataset": "isic2017", "metrics": {"test_dsc": 0.8}})  # its own table, no ref
    frame = _frame(rows)
    frame.loc[0, "run_id"] = "r0"
    board = lb.leaderboard(frame, per_case_loader=tables.get, with_published=False)
    raw = {m: _exact_wilcoxon_two_sided(g) for m, g in gains.items()}
    holm = dict(zip(raw, _holm_by_hand(list(raw.values()))))
    for model in gains:
        row = _row(board, "isic2018", model)
        assert row["wilcoxon_p"] == pytest.approx(raw[model]) and row["wilcoxon_p_holm"] == pytest.approx(holm[model])
    assert math.isnan(_row(board, "isic2017", "unet")["wilcoxon_p_holm"])


def test_hd95_interval_on_the_log_scale_and_percent_inside_0_100():
    rows = [{"dataset": "synapse", "metrics": {"test_dsc": d, "test_hd95": h}} for d, h in ((0.5997, 10.0), (0.9993, 40.0))]
    board = lb.leaderboard(_frame(rows), per_case_loader=False, with_published=False)
    vm = _row(board, "synapse", "vmunet")
    # log-scale t-interval of HD95 10 and 40 voxels: geometric mean 20, factor exp(t1 * sd(log) / sqrt 2).
    sd = abs(math.log(40) - math.log(10)) / math.sqrt(2)
    factor = math.exp(_t975(1) * sd / math.sqrt(2))
    assert vm["hd95_vox_ci_lo"] == pytest.approx(20 / factor) and vm["hd95_vox_ci_hi"] == pytest.approx(20 * factor)
    assert 0 < vm["dsc_pct_ci_lo"] < 59.97 and 99.93 < vm["dsc_pct_ci_hi"] <= 100  # a plain t-interval reads 104.9
    zero = lb.leaderboard(_frame([{"dataset": "synapse", "metrics": {"test_dsc": 0.7, "test_hd95": h}} for h in (0.0, 5.0)]),
                          per_case_loader=False, with_published=False)
    assert math.isnan(_row(zero, "synapse", "vmunet")["hd95_vox_ci_lo"])  # no log-scale interval with a 0


def test_cv_validation_pool_and_test_split_rankings(cv_store):
    ranks = lb.rankings(lb.load_runs(cv_store.uri), n_boot=200, seed=3)
    test, pool = ranks.find("isic2018", "cv", "test"), ranks.find("isic2018", "cv", "cv-val")
    assert test is not None and pool is not None and test.n_cases == 6 and pool.n_cases == 6
    # Each pool case was validated by one fold per seed; averaged over the two seeds it is CV_VAL.
    for model, values in CV_VAL.items():
        assert pool.scores[model].to_dict() == pytest.approx(dict(zip(CV_POOL_IDS, values)))
        assert test.scores[model].to_dict() == pytest.approx(dict(zip(CV_TEST_IDS, CV_TEST[model])))
    assert pool.ranks["aggregate-then-rank"].to_dict() == {"unet": 1, "vmunet": 2, "att-unet": 3}
    assert pool.runs["unet"] == "3 folds x 2 seeds" and not pool.notes
    # The unet > vmunet > att-unet order holds on every pool case: every resample agrees.
    assert pool.stability.p_first["unet"] == 1.0 and np.all(pool.stability.kendall_tau == 1.0)
    assert ranks.consensus == {}  # one dataset: no consensus to form


def _ranks_by_hand(table: dict[str, list[float]]) -> dict[str, dict[str, int]]:
    """aggregate-then-rank and rank-then-aggregate written out with plain Python (ties share the best rank)."""
    models, n = list(table), len(next(iter(table.values())))

    def min_ranks(score: dict[str, float]) -> dict[str, int]:
        return {m: 1 + sum(score[o] > score[m] for o in models) for m in models}

    means = {m: sum(v) / n for m, v in table.items()}
    per_case = [min_ranks({m: table[m][i] for m in models}) for i in range(n)]
    mean_rank = {m: sum(r[m] for r in per_case) / n for m in models}
    return {"aggregate-then-rank": min_ranks(means), "rank-then-aggregate": min_ranks({m: -v for m, v in mean_rank.items()})}


def test_rankings_schemes_and_consensus_by_hand():
    tables = {
        "isic2018": {"A": [0.9, 0.8, 0.7, 0.9, 0.6, 0.8], "B": [0.8, 0.85, 0.6, 0.7, 0.65, 0.8], "C": [0.5, 0.9, 0.9, 0.6, 0.7, 0.5]},
        "isic2017": {"A": [0.6, 0.5, 0.4, 0.7], "B": [0.9, 0.8, 0.7, 0.6], "C": [0.7, 0.6, 0.5, 0.8]},
    }
    rows, loads = [], {}
    for dataset, table in tables.items():
        for model, values in table.items():
            loads[f"run{len(rows)}"] = _isic_case([f"{dataset}-{i}" for i in range(len(values))], values)
            rows.append({"model": model, "dataset": dataset, "metrics": {"test_dsc": 0.8}})
    ranks = lb.rankings(_frame(rows), per_case_loader=loads.get, n_boot=100, seed=0)
    expected_consensus = {}
    for dataset, table in tables.items():
        got = ranks.find(dataset, "holdout")
        by_hand = _ranks_by_hand(table)
        for scheme, expected in by_hand.items():
            assert got.ranks[scheme].to_dict() == expected, (dataset, scheme)
        for model, rank in by_hand["aggregate-then-rank"].items():
            expected_consensus.setdefault(model, []).append(rank)
        assert got.stability.rank_counts.sum(axis=1).eq(100).all()
        case_mean = got.case_mean.loc["A", "mean"]
        assert case_mean == pytest.approx(100 * sum(table["A"]) / len(table["A"]))
        assert got.case_mean.loc["A", "ci_lo"] <= case_mean <= got.case_mean.loc["A", "ci_hi"]
    consensus = ranks.consensus[("holdout", "test")]
    assert consensus["mean_rank"].to_dict() == pytest.approx({m: sum(r) / 2 for m, r in expected_consensus.items()})
    # isic2018: A 1, B 2, C 3; isic2017: B 1, C 2, A 3 -> mean A 2, B 1.5, C 2.5.
    assert consensus["consensus_rank"].to_dict() == {"B": 1, "A": 2, "C": 3}
    text = lb.render_rankings(ranks, "md")
    assert "Consensus rank | protocol: holdout" in text and "P(rank 1)" in text and "Kendall's tau-b" in text


def test_validation_cases_scored_by_two_folds_are_named():
    val = {"r0": _isic_case(["a", "b"], [0.5, 0.6]), "r1": _isic_case(["b", "c"], [0.8, 0.7])}
    rows = [{"model": "vmunet", "metrics": {"test_dsc": 0.8}}, {"model": "vmunet", "metrics": {"test_dsc": 0.8}}]
    frame = _frame(rows).assign(**{"run_id": ["r0", "r1"], f"tags.{tracking.TAG_PROTOCOL}": "cv",
                                   f"tags.{tracking.TAG_SEED}": "0", f"tags.{tracking.TAG_FOLD}": ["0", "1"]})
    cases = lb.case_tables(frame, lb.finished_runs(frame), val.get, val.get)
    scores, note = cases.model_scores(("isic2018", "cv", "vmunet"), "cv-val")
    assert scores.to_dict() == pytest.approx({"a": 0.5, "b": 0.7, "c": 0.7}) and "1 validation cases scored by more than one fold" in note


def test_budget_audit_counts_costs_and_recipe_distance(cv_store, cv_board):
    audit = lb.audit_store(cv_store.uri).set_index("model")
    vm, unet, att = audit.loc["vmunet"], audit.loc["unet"], audit.loc["att-unet"]
    assert (vm["trials"], vm["pruned"], vm["failed"]) == (4, 1, 1)
    assert vm["search_epochs"] == 3 + 3 + 1 + 2  # steps of each trial's epoch_time_s history
    devices = CV_FINAL_COST["device_hours"] / (CV_FINAL_COST["train_time_s"] / 3600)  # = 2
    assert vm["search_device_hours"] == pytest.approx((30 + 30 + 10 + 30) / 3600 * devices)
    assert (vm["final_runs"], vm["final_epochs"]) == (6, 18)
    assert vm["final_device_hours"] == pytest.approx(6 * 0.02)
    assert vm["device_hours_total"] == pytest.approx(vm["search_device_hours"] + 0.12)
    # Study JSON: lr 3e-4 against the recipe's 1e-3 (|log10 0.3| decades) beats drop path 0.1 vs 0.2 (0.5 relative).
    assert vm["recipe_key"] == "optim.lr" and vm["recipe_distance"] == pytest.approx(abs(math.log10(0.3)))
    assert vm["best_source"] == "study JSON"
    # No study JSON for unet: the final runs' lr 0.002 (the searched key's value) against 1e-3.
    assert unet["best_source"] == "final runs' params" and unet["recipe_distance"] == pytest.approx(math.log10(2))
    assert unet["search_device_hours"] == pytest.approx(30 / 3600 * devices) and unet["trials"] == 2
    assert att["trials"] == 0 and att["recipe_text"] == "no searched keys logged"
    (table,) = lb.split_tables(cv_board)
    flag = next(n for n in table.notes if "unequal budgets" in n)
    assert "search trials: att-unet 0, unet 2, vmunet 4" in flag


def test_recipe_lookup_and_distance():
    from vmbench.leaderboard.budget import lookup_recipe, recipe_distance

    recipe = {"optimizer": {"lr": 1e-3}, "drop_path_rate": 0.2, "datasets": {"synapse": {"T_max": 100}}, "batch_size": 8}
    assert lookup_recipe(recipe, "optim.lr") == 1e-3
    assert lookup_recipe(recipe, "model.overrides.drop_path_rate") == 0.2
    assert lookup_recipe(recipe, "scheduler.t_max", "synapse") == 100 and lookup_recipe(recipe, "scheduler.t_max", "isic") is None
    assert lookup_recipe(recipe, "train.batch_size") == 8
    assert recipe_distance("optim.lr", 1e-2, 1e-3) == (pytest.approx(1.0), "decades")
    assert recipe_distance("train.batch_size", 16, 8) == (pytest.approx(1.0), "relative")


def test_budget_flags_respect_the_tolerance():
    audit = pd.DataFrame({"dataset": "d", "protocol": "holdout", "model": ["a", "b"], "trials": [20, 19],
                          "device_hours_total": [10.0, 8.5]})
    flags = lb.budget_flags(audit, 0.10)[("d", "holdout")][0]
    assert "device-hours" in flags and "search trials" not in flags  # 1/20 = 5 % < 10 %; 1.5/10 = 15 % > 10 %
    assert lb.budget_flags(audit, 0.20) == {}


def test_metric_histories_sql_reader_matches_mlflow(cv_store):
    runs = lb.load_runs(cv_store.uri, stage="all")
    ids = list(runs["run_id"][:5])
    via_sql = lb.metric_histories(cv_store.uri, ids, ["val_dsc", "epoch_time_s"], engine="sql")
    via_mlflow = lb.metric_histories(cv_store.uri, ids, ["val_dsc", "epoch_time_s"], engine="mlflow")
    assert len(via_sql) > 0
    pd.testing.assert_frame_equal(via_sql, via_mlflow, check_dtype=False)


def test_cli_ranks_and_budget_notes(cv_store, capsys):
    argv = ["--tracking-uri", cv_store.uri, "--no-published", "--bootstrap", "50"]
    assert run_cli([*argv, "--ranks", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "protocol: cv" in out and "p Holm" in out and "unequal budgets" in out
    assert "Ranks | isic2018 | protocol: cv | test split" in out and "cross-validation pool" in out
    assert run_cli([*argv, "--ranks", "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {t["split"] for t in payload["rankings"]["tables"]} == {"test", "cv-val"}
    assert payload["rankings"]["tables"][0]["bootstrap"]["n_boot"] == 50
    assert run_cli([*argv, "--ranks", "--format", "csv"]) == 2
    assert "--ranks with --format csv" in capsys.readouterr().err
    assert run_cli([*argv, "--budget-tolerance", "0.9", "--format", "md"]) == 0
    assert "unequal budgets" in capsys.readouterr().out  # 4 vs 0 trials: a spread of 100 %


def test_latex_is_a_booktabs_table_with_chosen_columns(store, capsys):
    base = ["--tracking-uri", store.uri, "--dataset", "isic2018", "--format", "latex"]
    assert run_cli([*base, "--columns", "dsc,miou,hd95,params,gmacs"]) == 0
    tex = capsys.readouterr().out
    # hd95 is no ISIC metric: left out of this table, not an error; the model left, four numbers right.
    assert "\\begin{tabular}{lrrrr}\n\\toprule\nModel & DSC \\% & mIoU \\% & Params M & GMACs \\\\\n\\midrule" in tex
    assert "\\bottomrule\n\\end{tabular}" in tex and "\\hline" not in tex
    # Best measured value per column in bold (unet's 0.85 DSC and 0.75 mIoU: fixture); equal costs stay plain;
    # published rows are never bold. unet gains on all 6 paired cases: exact two-sided p = 2/2**6 = 0.031, one comparison
    # so Holm leaves it: below 0.05, marked and explained.
    assert "unet$^{*}$ & \\textbf{85.00} & \\textbf{75.00} & 27.43 & 4.11 \\\\" in tex
    assert "vmunet & 83.00 $\\pm$ 3.61 & 73.00 $\\pm$ 3.61 & 27.43 & 4.11 \\\\" in tex
    assert "vmunet [published] & 89.71 & 81.35 & -- & -- \\\\" in tex
    assert "$^{*}$: differs from vmunet in per-case DSC" in tex and "Holm-corrected" in tex
    # The default paper table: n, the dataset's metrics, the DSC interval, p Holm, params, GMACs (not 29 columns).
    assert run_cli(base) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Model & "))
    assert header.endswith("DSC \\% 95\\% CI & p Holm & Params M & GMACs \\\\") and header.count("&") == 11


def test_columns_apply_to_md_csv_and_html_and_typos_are_one_line(store, tmp_path, capsys):
    base = ["--tracking-uri", store.uri, "--dataset", "isic2018", "--columns", "dsc,dsc_ci,params"]
    assert run_cli([*base, "--format", "md"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["Model", "DSC %", "DSC % 95% CI", "Params M"]
    assert table[1].startswith("|:---") and table[1].endswith("---:|")  # model left, numbers right
    assert "| vmunet " in table[4] and "83.00 ± 3.61 |" in table[4] and "[71.84, 90.60] |" in table[4]
    assert run_cli([*base, "--format", "csv"]) == 0
    csv = pd.read_csv(StringIO(capsys.readouterr().out))
    assert list(csv.columns) == ["dataset", "protocol", "model", "kind", "dsc_pct_mean", "dsc_pct_std", "dsc_pct_ci_lo",
                                 "dsc_pct_ci_hi", "n_params"]
    assert run_cli([*base, "--format", "html"]) == 0
    parsed = _Tables()
    parsed.feed(capsys.readouterr().out)
    assert parsed.tables[0][0] == ["Model", "DSC %", "DSC % 95% CI", "Params M"]
    assert run_cli(["--tracking-uri", store.uri, "--columns", "dsc,dcs", "--format", "md"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmbench: error: --columns dcs: not a column") and "\n" not in err
    assert run_cli(["--tracking-uri", store.uri, "--columns", "dsc"]) == 2  # the terminal table fits itself
    assert "--columns with --format terminal" in capsys.readouterr().err


def test_latex_text_is_escaped_and_code_spans_are_typewriter():
    from vmbench.leaderboard.render import _latex_escape

    assert _latex_escape("single `vmbench train` runs, 5% of a_b & c") == (
        r"single \texttt{vmbench train} runs, 5\% of a\_b \& c")
    assert _latex_escape("an odd ` tick") == r"an odd \textasciigrave{} tick"  # never an unbalanced group
