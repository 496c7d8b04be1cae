"""How every benchmark case is measured: peak memory, best-of timings, one fresh process per case.

Peak memory is the CUDA allocator's peak on CUDA and the peak resident set size (``VmHWM``, reset
through ``/proc/self/clear_refs``) on CPU, above the level at entry. A fresh process per case keeps
one case's allocations and caches out of the next case's figures.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import signal
import time
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")
Runner = Callable[..., Any]


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


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (None: left alone) inside the block."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on CPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def best_time(fn: Callable[[], Any], repeats: int, device: str) -> float:
    """The shortest of ``repeats`` wall-clock runs of ``fn``, in seconds."""
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


class CaseTimeout(Exception):
    """A case ran past its time limit and its process was stopped."""


def in_fresh_process(fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
    """``fn(*args)`` in a newly spawned process; its exceptions come back as they were raised.

    ``timeout``: seconds from the process's start-up to the result; past them the process is
    killed and :class:`CaseTimeout` raised.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        if timeout is None:
            return pool.submit(fn, *args).result()
        worker = pool.submit(os.getpid).result()  # the pool's one process, started now
        try:
            return pool.submit(fn, *args).result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            os.kill(worker, signal.SIGKILL)
            raise CaseTimeout(f"stopped after {timeout:g} s") from None


def _in_this_process(fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
    return fn(*args)  # nothing here can stop it: no time limit


def case_runner(isolate: bool) -> Runner:
    """How cases run: each in a fresh process (``isolate``), or here (tests, fake cases)."""
    return in_fresh_process if isolate else _in_this_process


def attempt(call: Callable[[], T], catch: bool) -> tuple[T | None, str | None]:
    """``(call(), None)``; with ``catch``, ``(None, "Type: message")`` when the call raises instead.

    For the cases of a run on a GPU, where one failing case (out of memory, a compile error) must
    not end the run: the failure becomes a row of the table and the run fails at its end.
    """
    if not catch:
        return call(), None
    try:
        return call(), None
    except Exception as err:  # reported as a row by the caller, and the run fails at its end
        return None, f"{type(err).__name__}: {str(err)[:200]}"
