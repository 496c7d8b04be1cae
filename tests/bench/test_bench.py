"""``vmbench bench``: the model benchmark's cases, skips and ratios, and the tables' arithmetic.

The CUDA branches cannot run here: their formatting is checked with made-up numbers, the expected
figures computed in the tests from first principles.
"""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import pytest
import torch

import vmbench
import vmbench.engine
from vmbench.bench import (
    ModelCase,
    ModelGroup,
    bench_model,
    plan_model_groups,
    run_model_case,
    select_models,
    uses_selective_scan,
)
from vmbench.bench import model as model_bench
from vmbench.bench.measure import CaseTimeout, in_fresh_process
from vmbench.bench import scan as scan_bench
from vmbench.cli import build_parser
from vmbench.errors import ModelInputError, UnknownNameError

ROOT = Path(__file__).resolve().parents[2]


class TwoHeads(torch.nn.Module):
    """Returns (auxiliary, final) logits while training, as TransFuse returns (map_x, map_1, map_2)."""

    deep_supervision_weights = (0.25, 0.75)

    def __init__(self):
        super().__init__()
        self.aux = torch.nn.Conv2d(3, 1, 1)
        self.final = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return (self.aux(x), self.final(x)) if self.training else self.final(x)


def test_bench_model_trains_a_deep_supervision_model(monkeypatch):
    built = []
    monkeypatch.setattr(vmbench.engine, "build_model", lambda *a, **kw: built.append(TwoHeads()) or built[-1])
    result = run_model_case(ModelCase(model="two-heads", size=16, batch=2, steps=1))
    assert result["images_per_s"] > 0 and result["cpu_step_s"] > 0
    # Both heads were trained (each got a gradient), as the training engine trains them.
    assert all(p.grad is not None for p in built[0].parameters())


def test_a_mamba_model_gets_a_row_per_backend_with_ratios_to_the_reference(monkeypatch):
    monkeypatch.delenv("VMBENCH_SCAN_BACKEND", raising=False)
    lines, progress = [], []
    threads = torch.get_num_threads()
    rows = bench_model("ultralight-vmunet", sizes=(32,), steps=1, isolate=False, threads=1, printer=lines.append,
                       progress=progress.append, backends=["torch", "reference"])  # fmt: skip
    assert torch.get_num_threads() == threads  # restored after each case
    assert [r["backend"] for r in rows] == ["torch", "reference"]
    torch_row, ref_row = rows
    assert torch_row["batch"] == ref_row["batch"] == model_bench.REFERENCE_CPU_BATCH[0]  # like for like
    assert ref_row["steps"] == model_bench.REFERENCE_STEPS
    assert torch_row["time_ratio"] == pytest.approx(torch_row["step_s"] / ref_row["step_s"])
    assert torch_row["mem_ratio"] == pytest.approx(torch_row["peak_bytes"] / max(ref_row["peak_bytes"], 1))
    printed = [line.split() for line in lines if line.split()[:2] == ["ultralight-vmunet", "torch"]]
    assert len(printed) == 1 and printed[0][-3:] == [f"{torch_row[k]:.2f}x" for k in ("time_ratio", "cpu_ratio",
                                                                                       "mem_ratio")]
    assert progress[0].startswith("[1/2] ultralight-vmunet 32x32 backend torch batch 2")
    assert "VMBENCH_SCAN_BACKEND" not in os.environ  # each case restores the environment


def test_a_size_the_model_cannot_take_is_skipped_with_its_reason():
    lines = []
    results = bench_model("swin-unet", sizes=(32,), steps=1, isolate=False, printer=lines.append,
                          progress=lambda line: None, fallback=False)  # fmt: skip
    (entry,) = results
    assert entry["skipped"].startswith("Swin-UNet cannot be built for img_size 32x32")
    assert any(line.split()[:4] == ["swin-unet", "-", "32x32", "skipped:"] for line in lines)


def _fake_case(accepts, seconds):
    """run_model_case stand-in: ModelInputError unless the model accepts the size; made-up timings."""

    def run(case):
        if case.hw not in accepts[case.model]:
            raise ModelInputError(f"{case.model} cannot take {case.hw}")
        step = seconds[case.backend]
        return dict(model=case.model, size=case.hw, batch=case.batch, amp=case.amp, backend=case.backend,
                    steps=case.steps, images_per_s=case.batch / step, step_s=step, cpu_step_s=2 * step,
                    peak_bytes=int(step * 2**20))  # fmt: skip

    return run


def test_skipped_sizes_fall_back_to_the_registered_size_only_when_nothing_else_ran(monkeypatch):
    accepts = {"swin-unet": [(224, 224)], "nnunet": [(256, 256)]}
    monkeypatch.setattr(model_bench, "run_model_case", _fake_case(accepts, {None: 0.5}))
    lines, progress = [], []
    results = bench_model(["swin-unet", "nnunet"], sizes=(64, 256), isolate=False, printer=lines.append,
                          progress=progress.append)  # fmt: skip
    measured = [(r["model"], r["size"]) for r in results if "skipped" not in r]
    skipped = [(r["model"], r["size"]) for r in results if "skipped" in r]
    assert measured == [("swin-unet", (224, 224)), ("nnunet", (256, 256))]  # nnunet's 256 is its own size
    assert skipped == [("swin-unet", (64, 64)), ("swin-unet", (256, 256)), ("nnunet", (64, 64))]
    assert any("swin-unet takes none of the sizes" in line for line in lines)
    # 5 cases were tried (4 planned, one fallback added); the count follows the skips and the fallback.
    assert [p.split()[0] for p in progress] == ["[1/4]", "[2/4]", "[3/5]", "[4/5]", "[5/5]"]


def test_ratios_and_table_columns_with_made_up_timings(monkeypatch):
    monkeypatch.setattr(model_bench, "run_model_case", _fake_case(
        {"vmunet": [(64, 64)]}, {"torch": 0.5, "reference": 2.0}))  # fmt: skip
    for device, cpu in (("cpu", True), ("cuda", False)):
        lines = []
        rows = bench_model("vmunet", sizes=(64,), device=device, backends=["torch", "reference"], isolate=False,
                           printer=lines.append, progress=lambda line: None)  # fmt: skip
        assert rows[0]["time_ratio"] == 0.25 and rows[0]["cpu_ratio"] == 0.25 and rows[0]["mem_ratio"] == 0.25
        header = next(line for line in lines if line.split()[:2] == ["model", "backend"])
        table = [line for line in lines if line.split()[:2] in (["vmunet", "torch"], ["vmunet", "reference"])]
        assert [len(line) for line in table] == [len(header)] * 2  # every column under its title
        torch_cols = table[0].split()
        assert torch_cols[5:7] == ["64.00" if device == "cuda" else "4.00", "0.500"]  # img/s = batch / 0.5 s
        assert torch_cols[-1] == "0.25x" and table[1].split()[-1] == "1.00x"
        assert ("cpu s/step" in header) == cpu and (torch_cols[7] == "1.000") == cpu


def test_cuda_model_case_failure_is_a_row_and_the_run_fails_at_the_end(monkeypatch):
    def run(case):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(model_bench, "run_model_case", run)
    lines = []
    with pytest.raises(RuntimeError, match="1 model case\\(s\\) failed: unet - at 256x256"):
        bench_model("unet", sizes=(256,), device="cuda", isolate=False, printer=lines.append,
                    progress=lambda line: None)  # fmt: skip
    assert lines[-1].split()[:2] == ["unet", "-"] and "failed: RuntimeError: CUDA out of memory" in lines[-1]


def test_a_reference_case_past_its_limit_is_stopped_and_reported(monkeypatch):
    fake = _fake_case({"vmunet": [(64, 64)]}, {"torch": 0.5})

    def runner(fn, case, timeout=None):
        if case.backend == "reference":
            assert timeout == 5.0
            raise CaseTimeout("stopped after 5 s")
        assert timeout is None  # only the reference has a limit
        return fake(case)

    monkeypatch.setattr(model_bench, "case_runner", lambda isolate: runner)
    lines = []
    rows = bench_model("vmunet", sizes=(64,), backends=["torch", "reference"], reference_timeout=5.0,
                       printer=lines.append, progress=lambda line: None)  # fmt: skip
    assert [r["backend"] for r in rows] == ["torch"] and "time_ratio" not in rows[0]
    # In backend order, where the reference's row would be: the line saying it was stopped.
    assert lines[-2].split()[:2] == ["vmunet", "torch"] and lines[-2].split()[-1] == "-"
    assert lines[-1].split()[:2] == ["vmunet", "reference"] and "stopped after 5 s" in lines[-1]


def test_a_fresh_process_past_its_time_limit_is_killed():
    start = time.perf_counter()
    with pytest.raises(CaseTimeout, match="stopped after 1 s"):
        in_fresh_process(time.sleep, 60, timeout=1)
    assert time.perf_counter() - start < 30
    assert in_fresh_process(divmod, 7, 2, timeout=30) == (3, 1)


def test_plan_lists_every_backend_for_mamba_models_and_one_case_for_the_others():
    sizes = {"unet": (256, 256), "ultralight-vmunet": (256, 256), "swin-unet": (224, 224)}
    groups = plan_model_groups(
        ["unet", "ultralight-vmunet", "swin-unet"], [64, 256, 64], ["torch", "reference"],
        uses_scan=lambda name: name == "ultralight-vmunet", registered_size=sizes.get,
    )  # fmt: skip
    assert groups == [
        ModelGroup("unet", (64, 64), 8, (None,)),
        ModelGroup("unet", (256, 256), 2, (None,)),
        ModelGroup("ultralight-vmunet", (64, 64), 2, ("torch", "reference")),  # the reference's batch
        ModelGroup("ultralight-vmunet", (256, 256), 1, ("torch", "reference")),
        ModelGroup("swin-unet", (64, 64), 8, (None,)),
        ModelGroup("swin-unet", (256, 256), 2, (None,)),
        ModelGroup("swin-unet", (224, 224), 2, (None,), fallback=True),
    ]
    # The reference by default only up to 64 px: above, the Mamba model runs without it, at the usual batch.
    limited = plan_model_groups(["ultralight-vmunet"], [64, 256], ["torch", "reference"], reference_max_side=64,
                                uses_scan=lambda name: True, registered_size=sizes.get)  # fmt: skip
    assert limited == [
        ModelGroup("ultralight-vmunet", (64, 64), 2, ("torch", "reference")),
        ModelGroup("ultralight-vmunet", (256, 256), 2, ("torch",)),
    ]
    no_ref = plan_model_groups(["ultralight-vmunet"], [64], ["torch"], device="cuda", uses_scan=lambda name: True,
                               registered_size=sizes.get, fallback=False)  # fmt: skip
    assert no_ref == [ModelGroup("ultralight-vmunet", (64, 64), 32, ("torch",))]


def test_model_selection_all_and_repeats():
    every = vmbench.list_models()
    assert select_models("all") == every and select_models(None) == ["vmunet"]
    assert select_models(["unet", "all", "unet"]) == ["unet"] + [n for n in every if n != "unet"]
    with pytest.raises(UnknownNameError):
        select_models(["vmunet", "vm-unet-typo"])
    args = build_parser().parse_args(["bench", "model", "--model", "all", "--model", "unet", "--no-fallback"])
    assert args.model == ["all", "unet"] and args.no_fallback


def test_scan_models_are_found_from_their_blocks():
    assert uses_selective_scan("ultralight-vmunet") and uses_selective_scan("umamba-bot")
    assert not uses_selective_scan("unet") and not uses_selective_scan("att-unet")


def test_only_ss2d_and_mamba_call_the_scan():
    # uses_selective_scan recognises models by these two blocks: a new caller must be added there.
    callers = set()
    for path in [*(ROOT / "vmbench" / "models").glob("*.py"), *(ROOT / "baselines").glob("*.py")]:
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef):
                for call in ast.walk(cls):
                    func = getattr(call, "func", None)
                    name = getattr(func, "id", None) or getattr(func, "attr", None)
                    if isinstance(call, ast.Call) and name in ("selective_scan", "selective_scan_fn"):
                        callers.add(cls.name)
    assert callers == {"SS2D", "Mamba"}


def test_cuda_scan_row_bandwidth_from_first_principles():
    # VM-UNet stage 1 at batch 32 (K*D = 768, L = 4096, N = 16, K = 4): forward moves u, delta, y
    # (B*KD*L fp32 each) and B, C (B*K*N*L each); backward u, delta, dy, du, ddelta and B, C, dB, dC.
    bkdl, bknl = 32 * 768 * 4096, 32 * 4 * 16 * 4096
    fwd, bwd = (3 * bkdl + 2 * bknl) * 4, (5 * bkdl + 4 * bknl) * 4
    assert scan_bench.scan_bytes(768, 4096, 32) == (fwd, bwd)
    row = dict(impl="triton", shape=(768, 4096), batch=32, fwd_s=1e-3, fwd_bwd_s=4e-3, fwd_peak_bytes=0,
               fwd_bwd_peak_bytes=3 * 2**20)  # fmt: skip
    scan_bench.add_bandwidth(row, 32, 3000.0)
    cols = scan_bench.scan_line(row, cuda=True).split()
    fwd_gbps, train_gbps = fwd / 1e-3 / 1e9, (fwd + bwd) / 4e-3 / 1e9
    assert cols[2:6] == ["triton", "1.000", "4.000", "3.0"]
    assert cols[6:9] == [f"{fwd_gbps:.0f}", f"{100 * fwd_gbps / 3000:.0f}%", f"{3000 / fwd_gbps:.2f}x"]
    assert cols[9:12] == [f"{train_gbps:.0f}", f"{100 * train_gbps / 3000:.0f}%", f"{3000 / train_gbps:.2f}x"]
    header = scan_bench.scan_header(cuda=True, ratios=True)
    line = scan_bench.scan_line(row, cuda=True) + scan_bench.add_ratios(row, dict(row, fwd_bwd_s=8e-3))
    assert len(line) == len(header) and line.split()[-2:] == ["0.50x", "1.00x"]
