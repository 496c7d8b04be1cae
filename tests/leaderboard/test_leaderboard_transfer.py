"""Transfer tables (issue 20, part 4): runs scored on a dataset they were not trained on, tabled apart
from their own test split, with paired tests worked out here by hand."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from mlflow_store import Store, _exact_wilcoxon_two_sided, _isic_case, _isic_metrics
from vmbench import tracking
from vmbench.leaderboard import leaderboard, load_runs, print_terminal, render
from vmbench.leaderboard.tables import split_tables

IDS = [f"ISIC_{i:07d}" for i in range(8)]
OWN = {"unet": 0.80, "vmunet": 0.84}
# Per-case dice on the other dataset, per model and seed. Seed means: unet U, vmunet U + D with D's
# magnitudes distinct (no ties: the exact test applies), one case in vmunet's favour.
_U = [0.71, 0.61, 0.56, 0.80, 0.65, 0.60, 0.72, 0.69]
_D = [-0.09, -0.05, -0.10, -0.08, 0.03, -0.11, -0.04, -0.13]
MOVED = {
    "unet": tuple([u + e for u in _U] for e in (-0.01, 0.01)),
    "vmunet": tuple([u + d + e for u, d in zip(_U, _D)] for e in (0.02, -0.02)),
}
NAME = "isic2017-test"


def _log_transfer(s: Store, run_id: str, dice: list[float]) -> None:
    folder = s.root / "upload-transfer" / run_id
    folder.mkdir(parents=True)
    _isic_case(IDS, dice).to_csv(folder / "per_case.csv", index=False)
    s.client.log_artifact(run_id, str(folder / "per_case.csv"), artifact_path=f"eval/{NAME}")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    s = Store(tmp_path_factory.mktemp("transfer-store"))
    for model, seeds in MOVED.items():
        for seed, dice in enumerate(seeds):
            mean = sum(dice) / len(dice)
            metrics = {**_isic_metrics(OWN[model] + 0.01 * seed, 60, 0.1), f"eval_{NAME}_dsc": mean,
                       f"eval_{NAME}_miou": mean - 0.1}
            run_id = s.log(model, "isic2018", "holdout", seed, metrics, per_case=_isic_case(IDS, [OWN[model]] * 8),
                           tags={tracking.transfer_tag(NAME): "true"})
            _log_transfer(s, run_id, dice)
    # A run whose transfer evaluation failed: its tag says so, and it enters no transfer row.
    s.log("unet", "isic2018", "holdout", 9, {**_isic_metrics(0.8, 60, 0.1), f"eval_{NAME}_dsc": 0.01},
          per_case=_isic_case(IDS, [0.8] * 8), tags={tracking.transfer_tag(NAME): "failed: DataError: no folder"})
    return s


def test_transfer_rows_average_the_runs_and_test_on_the_transfer_cases(store):
    board = leaderboard(load_runs(store.uri), reference="unet", with_published=False)
    moved = board[board["scored_on"] == "isic2017"].set_index("model")
    own = board[board["scored_on"] == ""].set_index("model")
    assert sorted(moved.index) == ["unet", "vmunet"] and list(moved["n"]) == [2, 2]
    assert set(moved["scored_split"]) == {"test"} and set(moved["dataset"]) == {"isic2018"}
    for model, seeds in MOVED.items():
        by_seed = [sum(d) / len(d) for d in seeds]
        assert moved.at[model, "dsc_pct_mean"] == pytest.approx(100 * sum(by_seed) / 2)
        assert moved.at[model, "own_dsc_pct_mean"] == pytest.approx(own.at[model, "dsc_pct_mean"])
    assert own.at["unet", "n"] == 3  # the failed transfer's run still counts on its own test split
    # The paired test on the transfer cases: seed-averaged per-case dice, exact enumeration of signs.
    mean = {m: [(a + b) / 2 for a, b in zip(*seeds)] for m, seeds in MOVED.items()}
    diff = [v - u for v, u in zip(mean["vmunet"], mean["unet"])]
    assert moved.at["vmunet", "wilcoxon_p"] == pytest.approx(_exact_wilcoxon_two_sided(diff))
    assert moved.at["vmunet", "wilcoxon_p_holm"] == pytest.approx(_exact_wilcoxon_two_sided(diff))  # 1 comparison
    assert moved.at["vmunet", "dsc_diff_pp"] == pytest.approx(100 * sum(diff) / len(diff))
    # The test-split table keeps its own test (every case equal: no test possible), untouched by the transfer cases.
    assert own.at["vmunet", "wilcoxon_pairs"] == 8 and own.at["vmunet", "dsc_diff_pp"] == pytest.approx(4.0)


def test_transfer_tables_are_titled_and_rendered_apart(store):
    board = leaderboard(load_runs(store.uri), reference="unet", with_published=False)
    tables = split_tables(board)
    assert [t.is_transfer for t in tables] == [False, True]
    title = tables[1].title
    assert title.startswith("isic2018 → isic2017 | protocol: holdout | transfer:")
    assert "scored on isic2017's test split" in title and "U-Bench's zero-shot axis" in tables[1].notes[0]
    md = render(board, "md")
    assert "Own test DSC %" in md and md.index("isic2018 → isic2017") > md.index("### isic2018 | protocol")
    csv = pd.read_csv(io.StringIO(render(board, "csv")))
    assert set(csv["scored_on"].fillna("")) == {"", "isic2017"}
    out = io.StringIO()
    print_terminal(board, file=out)
    assert "isic2018 → isic2017" in out.getvalue()


@pytest.mark.parametrize("loader", [False, lambda run_id: None], ids=["no-wilcoxon", "reads-one-file-only"])
def test_a_loader_that_cannot_read_the_transfer_files_tests_nothing_there(store, loader):
    board = leaderboard(load_runs(store.uri), reference="unet", with_published=False, per_case_loader=loader)
    moved = board[board["scored_on"] == "isic2017"].set_index("model")
    assert moved["wilcoxon_p"].isna().all() and len(moved) == 2


def test_the_transfer_rows_can_be_left_out(store):
    board = leaderboard(load_runs(store.uri), reference="unet", with_published=False, transfer=False)
    assert set(board["scored_on"]) == {""}


def test_a_store_without_transfer_has_no_transfer_column_values(tmp_path: Path):
    s = Store(tmp_path)
    s.log("unet", "isic2018", "holdout", 0, _isic_metrics(0.8, 60, 0.1))
    board = leaderboard(load_runs(s.uri), reference=None, with_published=False)
    assert set(board["scored_on"]) == {""} and [t.is_transfer for t in split_tables(board)] == [False]


def test_a_transfer_target_is_fed_inputs_normalised_as_in_training(tmp_path: Path):
    """A model trained on z-scored images (nnU-Net's recipe) is scored on the target's images z-scored
    too, never with the target's own default; options that choose data (the generator's n) stay the target's."""
    import sys

    from vmbench.config import ExperimentConfig
    from vmbench.engine.evaluation import transfer_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    import user_formats as F

    trained = ExperimentConfig.from_dict({"data": {"name": "synthetic-isic", "options": {"normalize": "zscore", "n": 12}}})
    assert transfer_config(trained, "isic2017").data.options == {"normalize": "zscore"}
    folder, _ = F.folder_png(tmp_path / "xfer-norm", n=4)
    options = {"format": "folder", "labels": None}
    moved = transfer_config(trained, "xfer-norm", str(folder), options).data.options
    assert moved.get("normalize") == "zscore" and "n" not in moved and moved["format"] == "folder"
    default = ExperimentConfig.from_dict({"data": {"name": "synthetic-isic"}})
    assert "normalize" not in transfer_config(default, "isic2017").data.options  # the default stays the default
