"""Benchmarks: ``vmbench bench scan``, ``vmbench bench model`` and ``vmbench bench tune``.

Every figure is measured in this run, side by side, and targets are printed as ratios; nothing is
compared with stored numbers. Each case runs in a fresh process so that peak memory (peak RSS on
CPU, ``torch.cuda.max_memory_allocated`` on CUDA) belongs to that case alone.

On CUDA the scan table adds the achieved memory bandwidth, the least traffic a scan needs
(:func:`scan_bytes`: every input read once, every output written once) divided by the measured
time, as a fraction of the device's peak (``--peak-gbps``, default: a device-to-device copy
measured in the same run) and as a multiple of the floor (bytes / peak: 0.43 ms forward and
0.72 ms backward for VM-UNet's stage 1 at batch 32 and a 3.0 TB/s copy).
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

# VM-UNet's four SS2D shapes (K*D channels, L tokens) at 256x256 input; N = 16, G = 4 directions.
STAGE_SHAPES: tuple[tuple[int, int], ...] = ((768, 4096), (1536, 1024), (3072, 256), (6144, 64))
MAMBAPY = "mambapy"


@dataclass
class ScanCase:
    impl: str  # a vmbench backend name, or "mambapy"
    channels: int
    length: int
    batch: int = 1
    d_state: int = 16
    groups: int = 4
    device: str = "cpu"
    repeats: int = 2
    threads: int | None = None


# ---------------------------------------------------------------------------------------------
# Memory probes


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak, or peak RSS on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            if not _reset_peak_rss():
                raise RuntimeError("peak RSS cannot be reset on this system (/proc/self/clear_refs)")
            self.base = _rss_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _rss_bytes("VmHWM") - self.base
        return False


# ---------------------------------------------------------------------------------------------
# Scan cases


def _scan_inputs(case: ScanCase):
    """Inputs distributed as in an initialised VM-UNet SS2D layer."""
    import torch

    g = torch.Generator().manual_seed(0)
    b, dim, L, N, G = case.batch, case.channels, case.length, case.d_state, case.groups
    u = torch.randn(b, dim, L, generator=g)
    delta = torch.randn(b, dim, L, generator=g) * 0.5
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1)  # -exp(A_logs) at init
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    delta_bias = dt + torch.log(-torch.expm1(-dt))  # softplus^-1 of the dt init
    B = torch.randn(b, G, N, L, generator=g)
    C = torch.randn(b, G, N, L, generator=g)
    D = torch.ones(dim)
    tensors = [u, delta, A, B, C, D, delta_bias]
    return [t.to(case.device).requires_grad_() for t in tensors]


def _mambapy_scan(u, delta, A, B, C, D, delta_bias):
    """The same grouped S6 computed with mambapy's Blelloch ``pscan`` (its own recipe)."""
    import torch.nn.functional as F
    from mambapy.pscan import pscan

    dim = u.shape[1]
    G = B.shape[1]
    dt = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (b, L, dim)
    x = u.transpose(1, 2)
    Bt = B.permute(0, 3, 1, 2).repeat_interleave(dim // G, dim=2)  # (b, L, dim, N)
    Ct = C.permute(0, 3, 1, 2).repeat_interleave(dim // G, dim=2)
    deltaA = (dt.unsqueeze(-1) * A).exp()
    BX = dt.unsqueeze(-1) * Bt * x.unsqueeze(-1)
    hs = pscan(deltaA, BX)
    y = (hs * Ct).sum(-1) + D * x
    return y.transpose(1, 2)


def _scan_fn(impl: str) -> Callable[..., Any]:
    if impl == MAMBAPY:
        return _mambapy_scan
    from vmbench.ops import selective_scan

    def run(u, delta, A, B, C, D, delta_bias):
        return selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True, backend=impl)

    return run


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _best_time(fn: Callable[[], Any], repeats: int, device: str) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def run_scan_case(case: ScanCase) -> dict[str, Any]:
    """Time one implementation at one shape (meant to run in a fresh process)."""
    import torch

    if case.threads:
        torch.set_num_threads(case.threads)
    inputs = _scan_inputs(case)
    fn = _scan_fn(case.impl)

    def forward():
        with torch.no_grad():
            fn(*inputs)

    def forward_backward():
        out = fn(*inputs)
        out.sum().backward()
        for t in inputs:
            t.grad = None

    # Warm-up of both paths: allocator, lazy init, and on CUDA the kernels' compilation (the
    # inference forward is its own Triton specialisation, without checkpoints).
    forward_backward()
    forward()
    with PeakMemory(case.device) as fwd_mem:
        t_fwd = _best_time(forward, case.repeats, case.device)
    with PeakMemory(case.device) as train_mem:
        t_train = _best_time(forward_backward, case.repeats, case.device)
    return {
        "impl": case.impl,
        "shape": (case.channels, case.length),
        "batch": case.batch,
        "fwd_s": t_fwd,
        "fwd_bwd_s": t_train,
        "fwd_peak_bytes": fwd_mem.peak,
        "fwd_bwd_peak_bytes": train_mem.peak,
    }


def _in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def scan_bytes(channels: int, length: int, batch: int, d_state: int = 16, groups: int = 4, itemsize: int = 4):
    """(forward, backward) HBM bytes one scan must move at least (small terms ignored).

    Forward: u, delta, B, C in, y out = (3*BKDL + 2*BKNL) * itemsize. Backward (recompute
    included): u, delta, dy, B, C in, du, ddelta, dB, dC out = (5*BKDL + 4*BKNL) * itemsize.
    """
    bkdl = batch * channels * length
    bknl = batch * groups * d_state * length
    return (3 * bkdl + 2 * bknl) * itemsize, (5 * bkdl + 4 * bknl) * itemsize


def measure_copy_gbps(device: str = "cuda", nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write bytes, best of ``repeats``)."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * nbytes / best / 1e9


def mambapy_available() -> bool:
    try:
        import mambapy.pscan  # noqa: F401
    except ImportError:
        return False
    return True


def bench_scan(
    backends: list[str] | None = None,
    shapes: tuple[tuple[int, int], ...] = STAGE_SHAPES,
    batch: int = 1,
    device: str = "cpu",
    repeats: int = 2,
    compare_mambapy: bool = True,
    isolate: bool = True,
    threads: int | None = None,
    printer: Callable[[str], None] = print,
    peak_gbps: float | None = None,
) -> list[dict[str, Any]]:
    """Measure each backend (and mambapy's pscan) at each shape; print a table with ratios.

    On CUDA: times in ms, plus achieved GB/s (:func:`scan_bytes` / time) against ``peak_gbps`` (default:
    a device-to-device copy measured now) and the multiple of the floor (bytes / peak). mambapy is
    compared on CUDA only if installed; a case that fails there (e.g. out of memory) prints a row
    saying so instead of ending the run.
    """
    from vmbench.ops import available_backends

    cuda = device.startswith("cuda")
    if backends is None:
        # The reference backend is an oracle, not a contender: its loop is far too slow here; on
        # CPU, so is Triton's interpreter (available under TRITON_INTERPRET=1).
        backends = [b for b in available_backends(device) if b != "reference" and (cuda or b != "triton")]
    impls = list(backends)
    if compare_mambapy:
        if mambapy_available():
            impls.append(MAMBAPY)
        elif cuda:
            printer("(mambapy is not installed: no pscan comparison)")
            compare_mambapy = False
        else:
            raise RuntimeError("mambapy is not installed: pip install 'vmbench[dev]' (or pass --no-mambapy)")
    runner = _in_fresh_process if isolate else (lambda fn, *a: fn(*a))
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or None
    if cuda and peak_gbps is None:
        peak_gbps = runner(measure_copy_gbps, device)
        peak_source = "device-to-device copy measured in this run"
    else:
        peak_source = "--peak-gbps"
    printer(
        f"selective scan, {device}, batch {batch}, N=16, G=4, best of {repeats}"
        + (f", {threads} threads" if threads else "")
        + ("; ratios are against mambapy's pscan in this run" if compare_mambapy else "")
    )
    if cuda:
        printer(
            f"peak {peak_gbps:.0f} GB/s ({peak_source}); GB/s = least bytes moved / time; "
            "x floor = time / (bytes / peak)"
        )
        header = (
            f"{'(K*D, L)':>14} {'impl':>10} {'fwd ms':>9} {'fwd+bwd ms':>10} {'peak MiB':>9} "
            f"{'fwd GB/s':>9} {'%peak':>6} {'x floor':>8} {'f+b GB/s':>9} {'%peak':>6} {'x floor':>8}"
        )
    else:
        header = f"{'(K*D, L)':>14} {'impl':>10} {'fwd s':>9} {'fwd+bwd s':>10} {'peak MiB':>9}"
    if compare_mambapy:
        header += f" {'time ratio':>11} {'mem ratio':>10}"
    printer(header)
    results, failures = [], []
    for channels, length in shapes:
        rows = []
        for impl in impls:
            case = ScanCase(impl, channels, length, batch, device=device, repeats=repeats, threads=threads)
            if not cuda:
                rows.append(runner(run_scan_case, case))
                continue
            try:
                rows.append(runner(run_scan_case, case))
            except Exception as err:  # one failing implementation (OOM, compile error) must not end the run
                printer(f"{str((channels, length)):>14} {impl:>10} failed: {type(err).__name__}: {str(err)[:200]}")
                failures.append(f"{impl} at {(channels, length)}")
        ref = next((r for r in rows if r["impl"] == MAMBAPY), None)
        for r in rows:
            if cuda:
                fwd_bytes, bwd_bytes = scan_bytes(channels, length, batch)
                r["fwd_gbps"] = fwd_bytes / r["fwd_s"] / 1e9
                r["fwd_bwd_gbps"] = (fwd_bytes + bwd_bytes) / r["fwd_bwd_s"] / 1e9
                r["peak_gbps"] = peak_gbps
                r["fwd_x_floor"] = peak_gbps / r["fwd_gbps"]
                r["fwd_bwd_x_floor"] = peak_gbps / r["fwd_bwd_gbps"]
                line = (
                    f"{str((channels, length)):>14} {r['impl']:>10} {r['fwd_s'] * 1e3:>9.3f} "
                    f"{r['fwd_bwd_s'] * 1e3:>10.3f} {r['fwd_bwd_peak_bytes'] / 2**20:>9.1f} "
                    f"{r['fwd_gbps']:>9.0f} {100 * r['fwd_gbps'] / peak_gbps:>5.0f}% {r['fwd_x_floor']:>7.2f}x "
                    f"{r['fwd_bwd_gbps']:>9.0f} {100 * r['fwd_bwd_gbps'] / peak_gbps:>5.0f}% "
                    f"{r['fwd_bwd_x_floor']:>7.2f}x"
                )
            else:
                line = (
                    f"{str((channels, length)):>14} {r['impl']:>10} {r['fwd_s']:>9.3f} {r['fwd_bwd_s']:>10.3f} "
                    f"{r['fwd_bwd_peak_bytes'] / 2**20:>9.1f}"
                )
            if ref is not None:
                r["time_ratio"] = r["fwd_bwd_s"] / ref["fwd_bwd_s"]
                r["mem_ratio"] = r["fwd_bwd_peak_bytes"] / max(ref["fwd_bwd_peak_bytes"], 1)
                line += f" {r['time_ratio']:>10.2f}x {r['mem_ratio']:>9.2f}x"
            printer(line)
            results.append(r)
    if failures:
        raise RuntimeError(f"{len(failures)} scan case(s) failed: {', '.join(failures)} (see the rows above)")
    return results


# ---------------------------------------------------------------------------------------------
# Model training throughput


@dataclass
class ModelCase:
    model: str
    size: int
    batch: int
    steps: int = 3
    device: str = "cpu"
    num_classes: int = 1
    backend: str | None = None
    amp: bool = False  # bf16 autocast
    threads: int | None = None


def run_model_case(case: ModelCase) -> dict[str, Any]:
    """Training images/s of one model at one input size (meant to run in a fresh process)."""
    import torch

    import vmbench
    from vmbench.engine import as_float, supervised_loss
    from vmbench.ops import resolve_backend

    if case.threads:
        torch.set_num_threads(case.threads)
    if case.backend:
        os.environ["VMBENCH_SCAN_BACKEND"] = case.backend
    torch.manual_seed(0)
    model = vmbench.create_model(case.model, num_classes=case.num_classes).to(case.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    images = torch.randn(case.batch, 3, case.size, case.size, device=case.device)
    if case.num_classes == 1:
        target = (torch.rand(case.batch, 1, case.size, case.size, device=case.device) > 0.5).float()
        loss_fn = torch.nn.BCEWithLogitsLoss()
    else:
        target = torch.randint(0, case.num_classes, (case.batch, case.size, case.size), device=case.device)
        loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(case.device).type, dtype=torch.bfloat16, enabled=case.amp):
            output = model(images)
        # Deep-supervision models (TransFuse) return every head while training: the loss weighs them all.
        loss = supervised_loss(loss_fn, as_float(output), target, model)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, lazy init, optimizer state
    with PeakMemory(case.device) as mem:
        _sync(case.device)
        start = time.perf_counter()
        for _ in range(case.steps):
            step()
        _sync(case.device)
        elapsed = time.perf_counter() - start
    return {
        "model": case.model,
        "size": case.size,
        "batch": case.batch,
        "amp": case.amp,
        "backend": resolve_backend(case.backend, case.device),
        "images_per_s": case.batch * case.steps / elapsed,
        "step_s": elapsed / case.steps,
        "peak_bytes": mem.peak,
    }


def bench_model(
    model: str = "vmunet",
    sizes: tuple[int, ...] = (64, 256),
    batch: int | None = None,
    steps: int = 3,
    device: str = "cpu",
    backends: list[str] | None = None,
    amp_modes: tuple[bool, ...] = (False,),
    isolate: bool = True,
    threads: int | None = None,
    printer: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Training throughput (forward, backward, AdamW step) per backend, size and precision."""
    from vmbench.ops import available_backends

    cuda = device.startswith("cuda")
    if backends is None:
        # Not contenders: the reference oracle, and on CPU Triton's interpreter.
        backends = [b for b in available_backends(device) if b != "reference" and (cuda or b != "triton")]
    runner = _in_fresh_process if isolate else (lambda fn, *a: fn(*a))
    printer(f"{model} training (fwd+bwd+AdamW), {device}, {steps} timed steps after one warm-up")
    printer(f"{'backend':>10} {'size':>5} {'batch':>5} {'bf16':>5} {'img/s':>9} {'s/step':>8} {'peak MiB':>9}")
    results, failures = [], []
    for backend in backends:
        for size in sizes:
            # CPU default batches keep one step within seconds; CUDA uses the paper's batch 32.
            b = batch or (32 if device.startswith("cuda") else (8 if size <= 64 else 2))
            for amp in amp_modes:
                case = ModelCase(model, size, b, steps, device, backend=backend, amp=amp, threads=threads)
                if cuda:
                    try:
                        r = runner(run_model_case, case)
                    except Exception as err:  # e.g. out of memory for one backend: report, go on
                        why = f"{type(err).__name__}: {str(err)[:200]}"
                        printer(f"{backend:>10} {size:>5} {b:>5} {str(amp):>5} failed: {why}")
                        failures.append(f"{backend} at {size}px, bf16 {amp}")
                        continue
                else:
                    r = runner(run_model_case, case)
                printer(
                    f"{backend:>10} {size:>5} {b:>5} {str(amp):>5} {r['images_per_s']:>9.2f} "
                    f"{r['step_s']:>8.3f} {r['peak_bytes'] / 2**20:>9.1f}"
                )
                results.append(r)
    if failures:
        raise RuntimeError(f"{len(failures)} model case(s) failed: {', '.join(failures)} (see the rows above)")
    return results


# ---------------------------------------------------------------------------------------------
# Triton tile tuning


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
    inputs = _scan_inputs(one)
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(1, case.channels, case.length, generator=g).to(case.device)
    results = []
    for backend in ("triton", "torch"):
        for t in inputs:
            t.grad = None
        out = _scan_fn(backend)(*inputs)
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


TUNE_TOLERANCE = 1e-3  # of the largest magnitude; fp32 sums in another order differ by ~1e-6


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
    from vmbench.ops.selective_scan_triton import CONFIG_ENV_VAR, TUNING_CANDIDATES, parse_config

    candidates = [""] + [c.strip() for c in (TUNING_CANDIDATES if configs is None else configs) if c.strip()]
    candidates = list(dict.fromkeys(candidates))  # the defaults first, no repeats
    for text in candidates:
        parse_config(text)  # a typo fails here, naming the text, before anything is timed
    cuda = device.startswith("cuda")
    batch = batch or (32 if cuda else 1)
    runner = _in_fresh_process if isolate else (lambda fn, *a: fn(*a))
    printer(
        f"Triton scan tiles ({CONFIG_ENV_VAR}), {device}, batch {batch}, N=16, G=4, best of {repeats}; each "
        f"candidate checked against the torch backend first (output and gradients, batch 1, tolerance {tolerance:g})"
    )
    if not cuda:
        printer("(Triton's interpreter on the CPU: these times check the tool, they say nothing about a GPU)")
    unit, scale = ("ms", 1e3) if cuda else ("s", 1.0)
    labels = [f"{c}x{length}" for c, length in shapes]
    width = max(12, *(len(label) for label in labels))
    printer(
        f"{'config':<40} "
        + " ".join(f"{label:>{width}}" for label in labels)
        + f" {'fwd ' + unit:>10} {'fwd+bwd ' + unit:>11} {'vs defaults':>11} {'max err':>8}"
    )
    printer(f"{'':<40} " + " ".join(f"{'fwd+bwd ' + unit:>{width}}" for _ in labels))
    measured, failed = [], []
    for text in candidates:
        name = text or "(defaults)"
        try:
            result = runner(run_tune_case, TuneCase(text, tuple(shapes), batch, device, repeats))
        except Exception as err:  # one candidate failing (compile error, out of memory) must not end the run
            printer(f"{name:<40} failed: {type(err).__name__}: {str(err)[:200]}")
            failed.append(name)
            continue
        rows = result["rows"]
        error = max(r["max_rel_err"] for r in rows)
        entry = {
            "config": text,
            "rows": rows,
            "fwd_s": sum(r["fwd_s"] for r in rows),
            "fwd_bwd_s": sum(r["fwd_bwd_s"] for r in rows),
            "max_rel_err": error,
            "correct": error <= tolerance,
        }
        measured.append(entry)
        baseline = measured[0] if measured[0]["config"] == "" else None
        ratio = f"{baseline['fwd_bwd_s'] / entry['fwd_bwd_s']:>10.2f}x" if baseline else f"{'-':>11}"
        printer(
            f"{name:<40} "
            + " ".join(f"{r['fwd_bwd_s'] * scale:>{width}.3f}" for r in rows)
            + f" {entry['fwd_s'] * scale:>10.3f} {entry['fwd_bwd_s'] * scale:>11.3f} {ratio} {error:>8.1e}"
            + ("" if entry["correct"] else "  WRONG: excluded")
        )
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
