"""``vmbench bench tune``: Triton tile configurations, each checked against the torch backend and timed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vmbench.bench.measure import attempt, case_runner
from vmbench.bench.scan import STAGE_SHAPES, ScanCase, run_scan_case, scan_fn, scan_inputs

TUNE_TOLERANCE = 1e-3  # of the largest magnitude; fp32 sums in another order differ by ~1e-6


@dataclass
class TuneCase:
    config: str  # VMBENCH_TRITON_SCAN_CONFIG text; "" = the defaults
    shapes: tuple[tuple[int, int], ...]
    batch: int
    device: str
    repeats: int


def _max_relative_error(got, ref) -> float:
    """Largest absolute difference over the reference's largest magnitude."""
    scale = ref.abs().max().item()
    return (got.double() - ref.double()).abs().max().item() / max(scale, 1e-30)


def _check_against_torch(case: ScanCase) -> float:
    """Largest relative error of the Triton output and every input gradient against the torch backend,
    on inputs of the case's shape at batch 1 (a bad tile configuration shows at any batch size)."""
    import torch

    one = ScanCase("triton", case.channels, case.length, 1, case.d_state, case.groups, case.device)
    inputs = scan_inputs(one)
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(1, case.channels, case.length, generator=g).to(case.device)
    results = []
    for backend in ("triton", "torch"):
        for t in inputs:
            t.grad = None
        out = scan_fn(backend)(*inputs)
        (out * weights).sum().backward()
        results.append([out.detach()] + [t.grad.clone() for t in inputs])
    return max(_max_relative_error(got, ref) for got, ref in zip(*results))


def run_tune_case(case: TuneCase) -> dict[str, Any]:
    """Check one tile configuration against the torch backend, then time it at every shape."""
    from vmbench.environment import temporary_env
    from vmbench.ops.selective_scan_triton import CONFIG_ENV_VAR

    rows = []
    with temporary_env(CONFIG_ENV_VAR, case.config):
        for channels, length in case.shapes:
            scan_case = ScanCase("triton", channels, length, case.batch, device=case.device, repeats=case.repeats)
            error = _check_against_torch(scan_case)
            rows.append({**run_scan_case(scan_case), "max_rel_err": error})
    return {"config": case.config, "rows": rows}


def _candidates(configs: list[str] | None) -> list[str]:
    """The defaults first, then the given texts (default: vmbench's list), without blanks or repeats;
    a malformed text fails here, naming it, before anything is timed."""
    from vmbench.ops.selective_scan_triton import TUNING_CANDIDATES, parse_config

    candidates = [""] + [c.strip() for c in (TUNING_CANDIDATES if configs is None else configs) if c.strip()]
    candidates = list(dict.fromkeys(candidates))
    for text in candidates:
        parse_config(text)
    return candidates


def _tune_entry(text: str, rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    error = max(r["max_rel_err"] for r in rows)
    return {
        "config": text,
        "rows": rows,
        "fwd_s": sum(r["fwd_s"] for r in rows),
        "fwd_bwd_s": sum(r["fwd_bwd_s"] for r in rows),
        "max_rel_err": error,
        "correct": error <= tolerance,
    }


def _tune_line(entry: dict[str, Any], baseline: dict[str, Any] | None, width: int, scale: float) -> str:
    """One candidate's row: fwd+bwd per shape, sums, speed against the defaults, error."""
    name = entry["config"] or "(defaults)"
    ratio = f"{baseline['fwd_bwd_s'] / entry['fwd_bwd_s']:>10.2f}x" if baseline else f"{'-':>11}"
    return (
        f"{name:<40} "
        + " ".join(f"{r['fwd_bwd_s'] * scale:>{width}.3f}" for r in entry["rows"])
        + f" {entry['fwd_s'] * scale:>10.3f} {entry['fwd_bwd_s'] * scale:>11.3f} {ratio} {entry['max_rel_err']:>8.1e}"
        + ("" if entry["correct"] else "  WRONG: excluded")
    )


def _print_tune_header(shapes, cuda: bool, printer: Callable[[str], None]) -> int:
    """Prints the two header lines; returns the width of a per-shape column."""
    unit = "ms" if cuda else "s"
    labels = [f"{c}x{length}" for c, length in shapes]
    width = max(12, *(len(label) for label in labels))
    printer(
        f"{'config':<40} "
        + " ".join(f"{label:>{width}}" for label in labels)
        + f" {'fwd ' + unit:>10} {'fwd+bwd ' + unit:>11} {'vs defaults':>11} {'max err':>8}"
    )
    printer(f"{'':<40} " + " ".join(f"{'fwd+bwd ' + unit:>{width}}" for _ in labels))
    return width


def _recommend(measured, failed, tolerance: float, printer: Callable[[str], None]) -> dict[str, Any]:
    """The fastest correct candidates for training and inference, printed as settings to export."""
    from vmbench.ops.selective_scan_triton import CONFIG_ENV_VAR

    correct = [e for e in measured if e["correct"]]
    if not correct:
        raise RuntimeError(
            f"no Triton tile configuration both ran and matched the torch backend within {tolerance:g} "
            f"({len(failed)} failed, {len(measured)} wrong; see the rows above)"
        )
    summary = {"candidates": measured, "failed": failed}
    defaults = next((e for e in correct if e["config"] == ""), None)
    for key, what in (("fwd_bwd_s", "training (fwd+bwd)"), ("fwd_s", "inference (fwd)")):
        best = min(correct, key=lambda e: e[key])
        summary["best_" + key.removesuffix("_s")] = best["config"]
        if best["config"] == "":
            printer(f"fastest for {what}: the defaults ({CONFIG_ENV_VAR} unset)")
        else:
            gain = f", {defaults[key] / best[key]:.2f}x the defaults' speed" if defaults else ""
            printer(f"fastest for {what}: {CONFIG_ENV_VAR}='{best['config']}'{gain}")
    printer(
        f"(set {CONFIG_ENV_VAR} in the environment of the training processes; on a Ray cluster, in the "
        "workers' environment or runtime_env env_vars)"
    )
    return summary


def bench_tune(
    configs: list[str] | None = None,
    shapes: tuple[tuple[int, int], ...] = STAGE_SHAPES,
    batch: int | None = None,
    device: str = "cuda",
    repeats: int = 3,
    isolate: bool = True,
    printer: Callable[[str], None] = print,
    tolerance: float = TUNE_TOLERANCE,
) -> dict[str, Any]:
    """Time Triton tile configurations (``VMBENCH_TRITON_SCAN_CONFIG`` texts) on this device.

    Each candidate runs in a fresh process: first checked against the torch backend (output and all
    gradients, batch 1), then timed fwd and fwd+bwd at every shape. The fastest candidates for
    training (summed fwd+bwd) and inference (summed fwd) are printed as settings to export; the
    defaults are always among the candidates, as the baseline.
    """
    from vmbench.ops import resolve_backend

    resolve_backend("triton", device)  # a clear error if Triton cannot run here (e.g. CPU without the interpreter)
    from vmbench.ops.selective_scan_triton import CONFIG_ENV_VAR

    candidates = _candidates(configs)
    cuda = device.startswith("cuda")
    batch = batch or (32 if cuda else 1)
    runner = case_runner(isolate)
    printer(
        f"Triton scan tiles ({CONFIG_ENV_VAR}), {device}, batch {batch}, N=16, G=4, best of {repeats}; each "
        f"candidate checked against the torch backend first (output and gradients, batch 1, tolerance {tolerance:g})"
    )
    if not cuda:
        printer("(Triton's interpreter on the CPU: these times check the tool, they say nothing about a GPU)")
    width = _print_tune_header(shapes, cuda, printer)
    measured, failed = [], []
    for text in candidates:
        case = TuneCase(text, tuple(shapes), batch, device, repeats)
        result, error = attempt(lambda: runner(run_tune_case, case), catch=True)
        if error is not None:
            printer(f"{text or '(defaults)':<40} failed: {error}")
            failed.append(text or "(defaults)")
            continue
        measured.append(_tune_entry(text, result["rows"], tolerance))
        baseline = measured[0] if measured[0]["config"] == "" else None
        printer(_tune_line(measured[-1], baseline, width, 1e3 if cuda else 1.0))
    return _recommend(measured, failed, tolerance, printer)
