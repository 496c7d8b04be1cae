"""``vmbench bench model``: training images/s and peak memory of registered models, per scan backend.

A case is one training loop (forward, loss, backward, AdamW step) of one model at one input size
with one selective-scan backend, in a fresh process. The Mamba models (those built from a block
whose forward calls :func:`vmbench.ops.selective_scan`) run once per backend and each row gets its
time and peak-memory ratio to the ``reference`` backend measured in the same run, at the same
batch; the other models run once. The reference is slow (see ``REFERENCE_*`` below): one timed
step, small batches on CPU, by default only up to 64 px, and a time limit per case. A size a model
cannot take (its :class:`~vmbench.errors.ModelInputError`) is printed as skipped with the model's
reason; a model that takes none of the sizes asked for is measured at its registered input size.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from vmbench.bench.measure import CaseTimeout, PeakMemory, Runner, attempt, case_runner, sync, torch_threads
from vmbench.bench.scan import default_backends
from vmbench.environment import temporary_env
from vmbench.errors import ModelInputError

REFERENCE = "reference"
# The reference backend is a Python loop over the sequence (the test oracle): one timed step, and
# on CPU its model's cases all run at these batches (at most 64 px, larger) so that every backend's
# ratio to it compares the same work. Unless named (--backend reference) it runs only up to
# REFERENCE_DEFAULT_MAX_SIDE: at 256x256 its loop runs over up to 65536 tokens per layer (U-Mamba
# Enc's first stage), minutes per step on a CPU.
REFERENCE_STEPS = 1
REFERENCE_CPU_BATCH = (2, 1)
REFERENCE_DEFAULT_MAX_SIDE = 64
# Its backward is quadratic in the sequence length (each step's slice of the (B, D, L, N) tensors
# gets a full-size gradient): a case is stopped after this long (start-up included), and says so.
REFERENCE_TIMEOUT_S = 180.0
CPU_BATCH = (8, 2)  # keeps one training step within seconds on a CPU; CUDA uses the paper's batch 32
CUDA_BATCH = 32


@dataclass
class ModelCase:
    model: str
    size: int | tuple[int, int]  # a square side, or (height, width)
    batch: int
    steps: int = 3
    device: str = "cpu"
    num_classes: int = 1
    backend: str | None = None  # None: the automatic choice (or a model that calls no scan)
    amp: bool = False  # bf16 autocast
    threads: int | None = None

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)


@dataclass(frozen=True)
class ModelGroup:
    """One model at one input size: a case per backend, measured and printed side by side."""

    model: str
    hw: tuple[int, int]
    batch: int
    backends: tuple[str | None, ...]  # (None,) for a model that calls no scan
    fallback: bool = False  # measured only if the model took none of the sizes asked for


def _training_step(case: ModelCase, model, optimizer) -> Callable[[], None]:
    """One training step on fixed random images and targets (binary or multi-class)."""
    import torch

    from vmbench.engine import as_float, supervised_loss

    height, width = case.hw
    images = torch.randn(case.batch, 3, height, width, device=case.device)
    if case.num_classes == 1:
        target = (torch.rand(case.batch, 1, height, width, device=case.device) > 0.5).float()
        loss_fn = torch.nn.BCEWithLogitsLoss()
    else:
        target = torch.randint(0, case.num_classes, (case.batch, height, width), device=case.device)
        loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(case.device).type, dtype=torch.bfloat16, enabled=case.amp):
            output = model(images)
        # Deep-supervision models (TransFuse) return every head while training: the loss weighs them all.
        loss = supervised_loss(loss_fn, as_float(output), target, model)
        loss.backward()
        optimizer.step()

    return step


def run_model_case(case: ModelCase) -> dict[str, Any]:
    """Training images/s of one model at one input size (meant to run in a fresh process).

    The model is built as training builds it (at the input size, for the models with a fixed token
    grid). Raises :class:`ModelInputError` when the model cannot take the size.
    """
    import torch

    from vmbench.config import ExperimentConfig
    from vmbench.engine import build_model
    from vmbench.ops.selective_scan import ENV_VAR

    torch.manual_seed(0)
    config = ExperimentConfig.from_dict({"model": {"name": case.model}})
    model = build_model(config, case.num_classes, case.hw, load_pretrained=False).to(case.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    step = _training_step(case, model, optimizer)
    # The backend reaches every scan of the model through the environment (no constructor argument).
    backend = temporary_env(ENV_VAR, case.backend) if case.backend else contextlib.nullcontext()
    with torch_threads(case.threads), backend:
        step()  # warm-up: allocator, lazy init, optimizer state; a size the model cannot take fails here
        with PeakMemory(case.device) as mem:
            sync(case.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(case.steps):
                step()
            sync(case.device)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "model": case.model,
        "size": case.hw,
        "batch": case.batch,
        "amp": case.amp,
        "backend": case.backend,
        "steps": case.steps,
        "images_per_s": case.batch * case.steps / elapsed,
        "step_s": elapsed / case.steps,
        "cpu_step_s": cpu / case.steps,  # process CPU time, all threads: robust to other load
        "peak_bytes": mem.peak,
    }


# ---------------------------------------------------------------------------------------------
# Which cases run


def select_models(models: str | Sequence[str] | None) -> list[str]:
    """Registered names in the order given, without repeats; ``all`` stands for every registered
    model. An unknown name fails here (with suggestions), before anything runs."""
    import vmbench

    names = [models] if isinstance(models, str) else list(models or ["vmunet"])
    chosen = []
    for name in names:
        for each in vmbench.list_models() if name == "all" else [vmbench.model_info(name).name]:
            if each not in chosen:
                chosen.append(each)
    return chosen


def uses_selective_scan(name: str) -> bool:
    """Whether the model is built from a block whose forward calls vmbench's selective scan.

    The model is built on the meta device (no memory, no data): only its module types are read.
    """
    import torch

    import vmbench
    from vmbench.models.mamba import Mamba
    from vmbench.models.vmunet import SS2D

    with torch.device("meta"):
        model = vmbench.create_model(name)
    return any(isinstance(module, (SS2D, Mamba)) for module in model.modules())


def _registered_size(name: str) -> tuple[int, int]:
    import vmbench

    return tuple(vmbench.model_info(name).input_size)


def default_batch(device: str, hw: tuple[int, int], with_reference: bool) -> int:
    if device.startswith("cuda"):
        return CUDA_BATCH
    small, large = REFERENCE_CPU_BATCH if with_reference else CPU_BATCH
    return small if max(hw) <= 64 else large


def plan_model_groups(
    models: Sequence[str],
    sizes: Iterable[int],
    backends: Sequence[str],
    device: str = "cpu",
    batch: int | None = None,
    uses_scan: Callable[[str], bool] = uses_selective_scan,
    registered_size: Callable[[str], tuple[int, int]] = _registered_size,
    fallback: bool = True,
    reference_max_side: int | None = None,
) -> list[ModelGroup]:
    """Every (model, size) group in run order: the square ``sizes``, then (``fallback``) the model's
    registered size, run only if the model took none of them, when that size is not among them.

    The Mamba models get a case per backend, except the reference above ``reference_max_side``
    (None: at every size); the other models one case.
    """
    groups = []
    squares = [(side, side) for side in dict.fromkeys(sizes)]
    for name in models:
        scan = uses_scan(name)
        native = tuple(registered_size(name))
        extra = [(native, True)] if fallback and native not in squares else []
        for hw, is_fallback in [(hw, False) for hw in squares] + extra:
            too_long = reference_max_side is not None and max(hw) > reference_max_side
            group_backends = tuple(b for b in backends if not (b == REFERENCE and too_long)) if scan else (None,)
            size_batch = batch or default_batch(device, hw, REFERENCE in group_backends)
            groups.append(ModelGroup(name, hw, size_batch, group_backends, is_fallback))
    return groups


# ---------------------------------------------------------------------------------------------
# The table


def model_header(cpu: bool) -> str:
    header = f"{'model':>18} {'backend':>10} {'size':>9} {'batch':>5} {'bf16':>5} {'img/s':>9} {'s/step':>8}"
    header += f" {'cpu s/step':>10}" if cpu else ""
    header += f" {'peak MiB':>9} {'time ratio':>11}"
    return header + (f" {'cpu ratio':>10}" if cpu else "") + f" {'mem ratio':>10}"


def _group_label(model: str, backend: str | None, hw: tuple[int, int], batch: int, amp: bool) -> str:
    return f"{model:>18} {backend or '-':>10} {f'{hw[0]}x{hw[1]}':>9} {batch:>5} {str(amp):>5}"


def add_model_ratios(row: dict[str, Any], ref: dict[str, Any] | None) -> None:
    """Time, CPU-time and peak-memory ratios of a row to the reference backend's row (same batch)."""
    if ref is None:
        return
    row["time_ratio"] = row["step_s"] / ref["step_s"]
    row["cpu_ratio"] = row["cpu_step_s"] / ref["cpu_step_s"]
    row["mem_ratio"] = row["peak_bytes"] / max(ref["peak_bytes"], 1)


def model_line(row: dict[str, Any], cpu: bool) -> str:
    """One measured row; ratio columns read '-' where the run had no reference row to compare with."""

    def ratio(key: str, width: int) -> str:
        return f"{row[key]:>{width - 1}.2f}x" if key in row else f"{'-':>{width}}"

    line = _group_label(row["model"], row["backend"], row["size"], row["batch"], row["amp"])
    line += f" {row['images_per_s']:>9.2f} {row['step_s']:>8.3f}"
    line += f" {row['cpu_step_s']:>10.3f}" if cpu else ""
    line += f" {row['peak_bytes'] / 2**20:>9.1f} {ratio('time_ratio', 11)}"
    return line + (f" {ratio('cpu_ratio', 10)}" if cpu else "") + f" {ratio('mem_ratio', 10)}"


def _print_preamble(names, groups, backends, steps, device, batch, reference_max_side, printer) -> None:
    scan_models = list(dict.fromkeys(g.model for g in groups if g.backends != (None,)))
    others = [n for n in names if n not in scan_models]
    what = ", ".join(names) if len(names) <= 3 else f"{len(names)} models"
    plural = "s" if steps > 1 else ""
    printer(f"{what} training (fwd+bwd+AdamW), {device}, {steps} timed step{plural} after one warm-up")
    if scan_models:
        printer(f"Mamba models, one row per scan backend ({', '.join(backends)}): {', '.join(scan_models)}")
    if others:
        printer(f"no selective scan, one row each (backend '-'): {', '.join(others)}")
    if not scan_models:
        return
    if REFERENCE not in backends:
        printer("(no reference backend in this run: no ratios)")
        return
    notes = [f"{REFERENCE_STEPS} timed step"]
    if reference_max_side is not None:
        notes.append(f"only at sizes up to {reference_max_side} px (--backend reference: at every size)")
    if not (batch or device.startswith("cuda")):
        small, large = REFERENCE_CPU_BATCH
        notes.append(f"its model's cases all at batch {small} (<= 64 px) or {large}")
    printer("ratios = backend / the reference backend of the same model, size and batch in this run")
    printer(f"the reference backend (a Python loop over the sequence, the test oracle) is slow: {'; '.join(notes)}")


# ---------------------------------------------------------------------------------------------
# The run


def _measure(runner: Runner, case: ModelCase, timeout: float | None) -> dict[str, Any]:
    """The case's row; ``{"skipped": why}`` if the model cannot take the size, ``{"stopped": why}``
    past ``timeout``."""
    try:
        return runner(run_model_case, case, timeout=timeout)
    except ModelInputError as err:
        return {"skipped": str(err)}
    except CaseTimeout as err:
        return {"stopped": f"{err} (the reference's limit, --reference-timeout): no ratios at this size"}


@dataclass
class _Run:
    """What a bench_model run carries from group to group."""

    runner: Runner
    printer: Callable[[str], None]
    progress: Callable[[str], None]
    total: int
    reference_timeout: float | None = None
    done: int = 0


def _run_group(run: _Run, group: ModelGroup, case_kw: dict[str, Any], amp: bool, failures: list[str]):
    """Measures every backend of a group; returns (entries, None), an entry per backend in order (a
    row, or the line saying why there is none), or (None, why) if the model cannot take the size."""
    cuda = case_kw["device"].startswith("cuda")
    entries = []
    for backend in group.backends:
        steps = min(case_kw["steps"], REFERENCE_STEPS) if backend == REFERENCE else case_kw["steps"]
        case = ModelCase(group.model, group.hw, group.batch, **{**case_kw, "steps": steps}, backend=backend, amp=amp)
        run.done += 1
        run.progress(
            f"[{run.done}/{run.total}] {group.model} {group.hw[0]}x{group.hw[1]} backend {backend or '-'} "
            f"batch {group.batch}{' bf16' if amp else ''}, {steps} step{'s' if steps > 1 else ''}"
        )
        timeout = run.reference_timeout if backend == REFERENCE else None
        outcome, error = attempt(lambda: _measure(run.runner, case, timeout), catch=cuda)
        label = _group_label(group.model, backend, group.hw, group.batch, amp)
        if error is not None:
            entries.append(f"{label} failed: {error}")
            failures.append(f"{group.model} {backend or '-'} at {group.hw[0]}x{group.hw[1]}, bf16 {amp}")
        elif "skipped" in outcome:
            return None, outcome["skipped"]
        else:
            entries.append(f"{label} {outcome['stopped']}" if "stopped" in outcome else outcome)
    rows = [e for e in entries if isinstance(e, dict)]
    ref = next((r for r in rows if r["backend"] == REFERENCE), None)
    for row in rows:
        add_model_ratios(row, ref)
    return entries, None


def bench_model(
    model: str | Sequence[str] = "vmunet",
    sizes: tuple[int, ...] = (64, 256),
    batch: int | None = None,
    steps: int = 3,
    device: str = "cpu",
    backends: list[str] | None = None,
    amp_modes: tuple[bool, ...] = (False,),
    isolate: bool = True,
    threads: int | None = None,
    printer: Callable[[str], None] = print,
    progress: Callable[[str], None] | None = None,
    fallback: bool = True,
    reference_timeout: float | None = REFERENCE_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Training throughput (forward, backward, AdamW step) per model, size, backend and precision.

    ``model``: a registered name, ``all``, or a list of them. ``fallback``: a model that takes none
    of ``sizes`` is measured at its registered input size (:func:`plan_model_groups`).
    ``reference_timeout``: seconds after which a reference case (in a fresh process) is stopped
    and printed as such (None: no limit). Returns the
    measured rows, and for each skipped size a ``{"model", "size", "skipped"}`` entry. Progress
    goes to ``progress`` (default: stderr), the table to ``printer``.
    """
    names = select_models(model)
    limit = REFERENCE_DEFAULT_MAX_SIDE if backends is None else None
    backends = default_backends(device, with_reference=True) if backends is None else list(backends)
    groups = plan_model_groups(names, sizes, backends, device, batch, fallback=fallback, reference_max_side=limit)
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    total = sum(len(g.backends) for g in groups if not g.fallback) * len(amp_modes)
    run = _Run(case_runner(isolate), printer, progress, total, reference_timeout)
    _print_preamble(names, groups, backends, steps, device, batch, limit, printer)
    cpu = not device.startswith("cuda")
    printer(model_header(cpu))
    case_kw = {"steps": steps, "device": device, "threads": threads}
    results, failures, measured_models = [], [], set()
    for group in groups:
        planned, before = len(group.backends) * len(amp_modes), run.done
        if group.fallback and group.model in measured_models:
            continue
        if group.fallback:
            printer(f"{group.model} takes none of the sizes asked for: measured at its registered input size instead")
            run.total += planned
        for amp in amp_modes:
            entries, skipped = _run_group(run, group, case_kw, amp, failures)
            if skipped is not None:
                printer(f"{group.model:>18} {'-':>10} {f'{group.hw[0]}x{group.hw[1]}':>9} skipped: {skipped}")
                results.append({"model": group.model, "size": group.hw, "skipped": skipped})
                break
            rows = [e for e in entries if isinstance(e, dict)]
            measured_models.update(row["model"] for row in rows)
            for entry in entries:
                printer(model_line(entry, cpu) if isinstance(entry, dict) else entry)
            results += rows
        run.total -= planned - (run.done - before)  # the cases of a skipped size that did not run
    if failures:
        raise RuntimeError(f"{len(failures)} model case(s) failed: {', '.join(failures)} (see the rows above)")
    return results
