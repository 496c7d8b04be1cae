"""Cost figures logged with every final run: parameters, MACs, latency, peak memory (per run)."""

from __future__ import annotations

import logging
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("vmbench.profiling")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: torch.nn.Module, in_chans: int, img_size: tuple[int, int]) -> float:
    """Multiply-accumulates of one forward pass at batch 1, in G (as thop reports "FLOPs").

    Counted with ``torch.utils.flop_counter`` (convolutions, matmuls, attention) and halved
    from FLOPs to MACs; like thop, the selective scan (a custom op) is not counted, so the
    VM-UNet figure is comparable with the quoted 4.11 G at 256x256.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, in_chans, *img_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


def latency_ms(model: torch.nn.Module, in_chans: int, img_size: tuple[int, int], repeats: int = 10) -> float:
    """Median batch-1 inference time after two warm-up passes (CUDA synchronised)."""
    device = next(model.parameters()).device
    x = torch.randn(1, in_chans, *img_size, device=device)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for i in range(repeats + 2):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= 2:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000


# Linux: writing "5" to clear_refs resets the process's peak resident set size (VmHWM in
# /proc/self/status) to its current size (proc(5), since Linux 4.0); without it, the peak (and
# getrusage's ru_maxrss) is the process's since it started.
_CLEAR_REFS, _STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory_mb`: a run measured in a reused process (a Ray
    worker) then reports its own peak, not the largest one of the runs before it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")
    except OSError as err:  # not Linux, or /proc not writable: say that the figure is the process's
        log.warning("cannot reset the peak RSS here (%s): peak_mem_mb is the process's peak since it started", err)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since :func:`reset_peak_memory` (or the process start) on ``device``;
    on CPU the peak RSS over the same time."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    match = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.M) if _STATUS.exists() else None
    if match:
        return int(match.group(1)) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # no /proc: the process's lifetime peak
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere
