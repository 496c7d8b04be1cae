"""``vmbench bench scan``: the selective scan per backend, against mambapy's ``pscan``.

On CUDA the table adds the achieved memory bandwidth: the least traffic a scan needs
(:func:`scan_bytes`) divided by the measured time, as a fraction of the device's peak
(``--peak-gbps``, default: a device-to-device copy measured in the same run) and as a multiple of
the floor (bytes / peak; for VM-UNet's stage 1 at batch 32 and a 3.0 TB/s copy, 0.43 ms forward
and 0.72 ms backward).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from vmbench.bench.measure import PeakMemory, attempt, best_time, case_runner

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


def default_backends(device: str, with_reference: bool = False) -> list[str]:
    """The backends a benchmark measures when none are named: every available one, except Triton's
    interpreter on CPU (far too slow to say anything) and, unless asked, the reference oracle."""
    from vmbench.ops import available_backends

    cuda = device.startswith("cuda")
    return [b for b in available_backends(device) if (with_reference or b != "reference") and (cuda or b != "triton")]


def scan_inputs(case: ScanCase):
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


def scan_fn(impl: str) -> Callable[..., Any]:
    """The scan of ``impl`` (a vmbench backend, or mambapy) over :func:`scan_inputs`' tensors."""
    if impl == MAMBAPY:
        return _mambapy_scan
    from vmbench.ops import selective_scan

    def run(u, delta, A, B, C, D, delta_bias):
        return selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True, backend=impl)

    return run


def run_scan_case(case: ScanCase) -> dict[str, Any]:
    """Time one implementation at one shape (meant to run in a fresh process)."""
    import torch

    if case.threads:
        torch.set_num_threads(case.threads)
    inputs = scan_inputs(case)
    fn = scan_fn(case.impl)

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
        t_fwd = best_time(forward, case.repeats, case.device)
    with PeakMemory(case.device) as train_mem:
        t_train = best_time(forward_backward, case.repeats, case.device)
    return {
        "impl": case.impl,
        "shape": (case.channels, case.length),
        "batch": case.batch,
        "fwd_s": t_fwd,
        "fwd_bwd_s": t_train,
        "fwd_peak_bytes": fwd_mem.peak,
        "fwd_bwd_peak_bytes": train_mem.peak,
    }


def scan_bytes(channels: int, length: int, batch: int, d_state: int = 16, groups: int = 4, itemsize: int = 4):
    """(forward, backward) HBM bytes one scan must move at least (small terms ignored).

    What mamba-ssm's kernels read and write (``state-spaces/mamba`` tag ``v1.0.1``,
    ``csrc/selective_scan/selective_scan_fwd_kernel.cuh`` and ``selective_scan_bwd_kernel.cuh``),
    with B = batch, K*D = ``channels``, L = ``length``, N = ``d_state``, K = ``groups``:
    forward reads u, delta (B*KD*L each), B, C (B*K*N*L each) and writes y:
    (3*BKDL + 2*BKNL) * itemsize. Backward (the forward recomputed inside) reads u, delta, dy, B, C
    and writes du, ddelta, dB, dC: (5*BKDL + 4*BKNL) * itemsize.
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


def _compare_with_mambapy(wanted: bool, cuda: bool, printer: Callable[[str], None]) -> bool:
    """Whether mambapy joins the run: required on CPU when wanted, optional on CUDA."""
    if not wanted or mambapy_available():
        return wanted
    if cuda:
        printer("(mambapy is not installed: no pscan comparison)")
        return False
    raise RuntimeError("mambapy is not installed: pip install 'vmbench[dev]' (or pass --no-mambapy)")


BANDWIDTH_LEGEND = "GB/s = least bytes moved / time; x floor = time / (bytes / peak)"


def scan_header(cuda: bool, ratios: bool) -> str:
    if cuda:
        header = (
            f"{'(K*D, L)':>14} {'impl':>10} {'fwd ms':>9} {'fwd+bwd ms':>10} {'peak MiB':>9} "
            f"{'fwd GB/s':>9} {'%peak':>6} {'x floor':>8} {'f+b GB/s':>9} {'%peak':>6} {'x floor':>8}"
        )
    else:
        header = f"{'(K*D, L)':>14} {'impl':>10} {'fwd s':>9} {'fwd+bwd s':>10} {'peak MiB':>9}"
    return header + (f" {'time ratio':>11} {'mem ratio':>10}" if ratios else "")


def add_bandwidth(row: dict[str, Any], batch: int, peak_gbps: float) -> None:
    """Adds achieved GB/s (:func:`scan_bytes` / time) and the multiple of the floor to a CUDA row."""
    fwd_bytes, bwd_bytes = scan_bytes(*row["shape"], batch)
    row["fwd_gbps"] = fwd_bytes / row["fwd_s"] / 1e9
    row["fwd_bwd_gbps"] = (fwd_bytes + bwd_bytes) / row["fwd_bwd_s"] / 1e9
    row["peak_gbps"] = peak_gbps
    row["fwd_x_floor"] = peak_gbps / row["fwd_gbps"]
    row["fwd_bwd_x_floor"] = peak_gbps / row["fwd_bwd_gbps"]


def scan_line(row: dict[str, Any], cuda: bool) -> str:
    """One table row (without the ratio columns); CUDA rows need :func:`add_bandwidth` first."""
    shape = f"{str(row['shape']):>14} {row['impl']:>10}"
    if not cuda:
        return f"{shape} {row['fwd_s']:>9.3f} {row['fwd_bwd_s']:>10.3f} {row['fwd_bwd_peak_bytes'] / 2**20:>9.1f}"
    peak = row["peak_gbps"]
    return (
        f"{shape} {row['fwd_s'] * 1e3:>9.3f} "
        f"{row['fwd_bwd_s'] * 1e3:>10.3f} {row['fwd_bwd_peak_bytes'] / 2**20:>9.1f} "
        f"{row['fwd_gbps']:>9.0f} {100 * row['fwd_gbps'] / peak:>5.0f}% {row['fwd_x_floor']:>7.2f}x "
        f"{row['fwd_bwd_gbps']:>9.0f} {100 * row['fwd_bwd_gbps'] / peak:>5.0f}% "
        f"{row['fwd_bwd_x_floor']:>7.2f}x"
    )


def add_ratios(row: dict[str, Any], ref: dict[str, Any]) -> str:
    """Adds fwd+bwd time and peak-memory ratios to mambapy's row; returns their columns."""
    row["time_ratio"] = row["fwd_bwd_s"] / ref["fwd_bwd_s"]
    row["mem_ratio"] = row["fwd_bwd_peak_bytes"] / max(ref["fwd_bwd_peak_bytes"], 1)
    return f" {row['time_ratio']:>10.2f}x {row['mem_ratio']:>9.2f}x"


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
    cuda = device.startswith("cuda")
    impls = list(default_backends(device) if backends is None else backends)
    compare_mambapy = _compare_with_mambapy(compare_mambapy, cuda, printer)
    impls += [MAMBAPY] if compare_mambapy else []
    runner = case_runner(isolate)
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
        printer(f"peak {peak_gbps:.0f} GB/s ({peak_source}); " + BANDWIDTH_LEGEND)
    printer(scan_header(cuda, compare_mambapy))
    results, failures = [], []
    for channels, length in shapes:
        rows = []
        for impl in impls:
            case = ScanCase(impl, channels, length, batch, device=device, repeats=repeats, threads=threads)
            row, error = attempt(lambda: runner(run_scan_case, case), catch=cuda)
            if error is None:
                rows.append(row)
                continue
            printer(f"{str((channels, length)):>14} {impl:>10} failed: {error}")
            failures.append(f"{impl} at {(channels, length)}")
        ref = next((r for r in rows if r["impl"] == MAMBAPY), None)
        for r in rows:
            if cuda:
                add_bandwidth(r, batch, peak_gbps)
            printer(scan_line(r, cuda) + (add_ratios(r, ref) if ref is not None else ""))
            results.append(r)
    if failures:
        raise RuntimeError(f"{len(failures)} scan case(s) failed: {', '.join(failures)} (see the rows above)")
    return results
