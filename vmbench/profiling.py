"""Cost figures logged with every final run: parameters, MACs, latency, peak memory."""

from __future__ import annotations

import resource
import statistics
import time

import torch


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


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated by this process, or its peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
