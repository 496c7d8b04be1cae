"""Ablation twins on the leaderboard: the test of each model against its twin, corrected in one Holm
family with the reference comparisons, and the Ablations section under each table.

The store (``tests/mlflow_store.py``, ``ablation_store``) holds unet, vmunet, its two twins and
resenc-unet-m on 10 ISIC cases; expected p-values are enumerated and Holm-adjusted by hand here.
"""

from __future__ import annotations

from io import StringIO

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

from mlflow_store import _exact_wilcoxon_two_sided, ablation_diff, ablation_store, holm_by_hand  # noqa: E402

from vmbench import leaderboard as lb  # noqa: E402
from vmbench.leaderboard.paired import CONTROL_NOTE  # noqa: E402

# Parameters each twin's ablation silences in vmunet as registered for isic2018 (1 class, 3 channels):
# `vmbench models --ablations` prints them.
SILENCED = {"vmunet~no-ssm": 5_344_512, "vmunet~no-mamba": 24_271_104}


def _row(board, model):
    rows = board[(board["model"] == model) & (board["kind"] == "measured")]
    assert len(rows) == 1
    return rows.iloc[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return lb.load_runs(ablation_store(tmp_path_factory).uri)


@pytest.fixture(scope="module")
def board(runs):
    return lb.leaderboard(runs, reference="unet", with_published=False)


def test_twin_tests_join_the_holm_family_of_the_table(board):
    # The twins are controls: tested against vmunet, never against the reference unet.
    family = {("ref", m): _exact_wilcoxon_two_sided(ablation_diff(m, "unet")) for m in ("vmunet", "resenc-unet-m")}
    family.update({("twin", t): _exact_wilcoxon_two_sided(ablation_diff(t, "vmunet")) for t in SILENCED})
    holm = holm_by_hand(family)
    for twin in SILENCED:
        row = _row(board, twin)
        assert (row["ablation_of"], row["ablation_pairs"], row["holm_m"]) == ("vmunet", 10, 4)
        assert pd.isna(row["wilcoxon_p"]) and row["note"] == CONTROL_NOTE
        assert row["ablation_p"] == pytest.approx(family[("twin", twin)])
        assert row["ablation_p_holm"] == pytest.approx(holm[("twin", twin)])
        assert row["ablation_diff_pp"] == pytest.approx(100 * sum(ablation_diff(twin, "vmunet")) / 10)
        assert row["n_params_acting"] == 27_427_561 - SILENCED[twin]
    # The reference comparisons are corrected over the same 4 p-values, not over their own 2.
    assert _row(board, "vmunet")["wilcoxon_p_holm"] == pytest.approx(holm[("ref", "vmunet")])
    assert family[("twin", "vmunet~no-ssm")] == pytest.approx(2 / 2**10)  # every case worse
    # The model with the highest mean DSC (vmunet) against the others, twins left out: their own family of 2.
    against_best = holm_by_hand({m: _exact_wilcoxon_two_sided(ablation_diff(m, "vmunet")) for m in ("unet", "resenc-unet-m")})
    for model, p in against_best.items():
        assert (_row(board, model)["best_model"], _row(board, model)["vs_best_p_holm"]) == ("vmunet", pytest.approx(p))


def test_twin_of_the_reference_is_the_reference_test_counted_once(runs):
    board = lb.leaderboard(runs, reference="vmunet", with_published=False)
    family = {m: _exact_wilcoxon_two_sided(ablation_diff(m, "vmunet"))
              for m in ("unet", "vmunet~no-ssm", "vmunet~no-mamba", "resenc-unet-m")}
    holm = holm_by_hand(family)
    for twin in SILENCED:
        row = _row(board, twin)
        assert row["holm_m"] == 4 and row["ablation_p"] == pytest.approx(family[twin])
        assert row["ablation_p_holm"] == pytest.approx(holm[twin]) == row["wilcoxon_p_holm"]
        assert row["ablation_diff_pp"] == pytest.approx(row["dsc_diff_pp"])


def test_ablation_section_under_the_table_in_md_and_terminal(board):
    md = lb.render(board, "md")
    section = md.split("#### Ablations: does the state-space part help?")[1]
    holm_ssm = _row(board, "vmunet~no-ssm")["ablation_p_holm"]
    diff = 100 * sum(ablation_diff("vmunet~no-ssm", "vmunet")) / 10
    acting = (27_427_561 - SILENCED["vmunet~no-ssm"]) / 1e6
    line = next(x for x in section.splitlines() if "| vmunet~no-ssm" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["vmunet", "vmunet~no-ssm", f"{diff:+.2f}", f"{2 / 2**10:.3f}", f"{holm_ssm:.3f}", "10", f"{acting:.2f}"]
    assert "Holm-corrected in one family with the reference comparisons (4 comparisons)" in section
    out = StringIO()
    lb.print_terminal(board, file=out)
    text = out.getvalue()
    assert "isic2018 | Ablations: does the state-space part help?" in text and "vmunet~no-mamba" in text
