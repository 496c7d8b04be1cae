"""The report's verdict on ablation twins and cost: the wording for a twin that is and one that is not
significantly worse, the cheapest model not significantly worse than the best, vmbench's efficiency
score and nnU-Net Revisited's memory note, each checked against numbers worked out here.

The store is the ablation store of ``tests/mlflow_store.py`` (reference unet; vmunet, its twins, resenc-unet-m).
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

from mlflow_store import AB_COST, _exact_wilcoxon_two_sided, ablation_diff, ablation_store, holm_by_hand  # noqa: E402

from vmbench import leaderboard as lb  # noqa: E402
from vmbench.report.verdict import resenc_note, verdicts  # noqa: E402


@pytest.fixture(scope="module")
def verdict(tmp_path_factory):
    board = lb.leaderboard(lb.load_runs(ablation_store(tmp_path_factory).uri), reference="unet", with_published=False)
    (v,) = verdicts(lb.split_tables(board), "unet", None)
    return v


def _holm_family() -> dict[str, float]:
    """The table's 4 comparisons: 2 against unet (the twins are controls, tested against vmunet only), 2 of
    vmunet against its twins."""
    family = {f"ref {m}": _exact_wilcoxon_two_sided(ablation_diff(m, "unet")) for m in ("vmunet", "resenc-unet-m")}
    family.update({t: _exact_wilcoxon_two_sided(ablation_diff(t, "vmunet")) for t in ("vmunet~no-ssm", "vmunet~no-mamba")})
    return holm_by_hand(family)


def test_twin_verdicts_follow_the_corrected_test(verdict):
    holm = _holm_family()
    assert holm["vmunet~no-ssm"] < 0.05 <= holm["vmunet~no-mamba"]
    cost = -100 * sum(ablation_diff("vmunet~no-ssm", "vmunet")) / 10  # 4.10 points
    assert (f"Removing vmunet's state-space recurrence (vmunet~no-ssm) costs {cost:.1f} DSC points "
            f"(p Holm = {holm['vmunet~no-ssm']:.3f}): the SSM helps here.") in verdict.details
    delta = 100 * sum(ablation_diff("vmunet~no-mamba", "vmunet")) / 10  # -0.85 pp
    assert (f"vmunet~no-mamba is not significantly worse than vmunet (Δ {delta:+.1f} pp, p Holm = "
            f"{holm['vmunet~no-mamba']:.3f}): no evidence that the Mamba mixer helps on this dataset (a "
            "non-significant difference is not evidence that they are equal).") in verdict.details
    assert verdict.headline.startswith("isic2018 (holdout): vmunet is better than unet; ablations: no evidence that the "
                                       "Mamba mixer helps vmunet, the SSM helps vmunet (caveats: low power)")
    # The reference comparisons are worded with the same family size; the twins have none against unet.
    assert any("after Holm over 4 comparisons" in d for d in verdict.details)
    assert not any(d.startswith(("vmunet~no-ssm vs unet", "vmunet~no-mamba vs unet")) for d in verdict.details)


def test_cheapest_not_worse_and_efficiency_score_by_hand(verdict):
    # vmunet has the highest mean DSC of the models (twins are controls); unet (7.8 M) is cheaper but worse on
    # every case, resenc-unet-m (20 M) is not significantly worse: Holm over the 2 tests against vmunet.
    against = holm_by_hand({m: _exact_wilcoxon_two_sided(ablation_diff(m, "vmunet")) for m in ("unet", "resenc-unet-m")})
    assert against["unet"] < 0.05 <= against["resenc-unet-m"]
    text = " ".join(verdict.details)
    assert ("Cheapest model not significantly worse than the best (vmunet): resenc-unet-m (20.00 M parameters, "
            f"30.00 GMACs, mean DSC 80.00 %, p Holm = {against['resenc-unet-m']:.3f} against vmunet") in text
    scores = {m: 100 * AB_COST[m][0] / math.log10(AB_COST[m][1]) for m in ("unet", "vmunet", "resenc-unet-m")}
    ordered = sorted(scores.items(), key=lambda kv: -kv[1])
    listed = ", ".join(f"{m} {v:.2f}" for m, v in ordered)
    assert f"Highest efficiency score: {ordered[0][0]} ({listed}); efficiency score = mean test DSC (%) / " \
           "log10(parameters): vmbench's own summary" in text
    assert "arXiv:2510.07041" in text and "not U-Bench's formula" in text


def test_resenc_memory_note_beyond_twice(verdict):
    # unet peaks at 700 MB, resenc-unet-m at 3000 MB: 0.23x, beyond the factor 2.
    assert any(w.startswith("Memory: unet peaks at 700 MB, 0.23x the 3000 MB of resenc-unet-m, the nearest ResEnc "
                            "baseline. nnU-Net Revisited") for w in verdict.warnings)
    rows = pd.DataFrame({"model": ["unet", "resenc-unet-m", "resenc-unet-l"], "peak_mem_mb_max": [700.0, 3000.0, 1300.0]})
    assert resenc_note(rows, "unet") is None  # resenc-unet-l is nearest, 1.9x: within the factor 2
