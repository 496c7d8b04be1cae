"""Estimate of VM-UNet's training memory on a GPU with the Triton scan, computed on the CPU.

    python benchmarks/vmunet_memory.py                    # 256x256, batch 32, bf16 autocast and fp32

What autograd keeps between forward and backward is counted with ``saved_tensors_hooks`` over one
forward at batch 1 on the CPU (autocast in the same dtype policy as on CUDA), with the selective
scan replaced by a stand-in that saves exactly what the Triton backend's autograd Function saves:
its inputs (u, delta, A, B, C, D, delta_bias) and the chunk checkpoints, (batch, dim,
ceil(L / block_t), N) fp32. Activations scale linearly with the batch; weights, gradients and AdamW's
two moments are added once. Not a GPU measurement: the CUDA caching allocator, cuBLAS/cuDNN
workspaces and the transient tensors of the backward come on top (``vmbench bench model --device
cuda`` measures the real peak).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from vmbench.models import vmunet as vmunet_module  # noqa: E402
from vmbench.registry import create_model  # noqa: E402


class _TritonScanStandIn(torch.autograd.Function):
    """Saves what SelectiveScanTriton saves; its values are irrelevant here."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, block_t):
        batch, dim, length = u.shape
        n_chunks = math.ceil(length / block_t)
        ckpt = torch.empty((batch, dim, n_chunks, A.shape[1]), dtype=torch.float32)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ckpt)
        return torch.zeros_like(u)

    @staticmethod
    def backward(ctx, grad):  # never called
        raise NotImplementedError


def _counting_forward(model, image, autocast_dtype):
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            model(image)
    return sum(seen.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gpu-gib", type=float, default=79.2, help="device memory to compare with (H100 80GB)")
    args = parser.parse_args(argv)

    from vmbench.ops.selective_scan_triton import DEFAULT_CONFIG  # needs triton (compiled mode is fine on a CPU)

    block_t = DEFAULT_CONFIG.block_t

    def stand_in(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        return _TritonScanStandIn.apply(u, delta, A, B, C, D, delta_bias, block_t)

    vmunet_module.selective_scan = stand_in
    torch.manual_seed(0)
    model = create_model("vmunet", num_classes=1).train()
    params = sum(p.numel() for p in model.parameters())
    fixed = params * 4 * 4  # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq
    image = torch.randn(1, 3, args.size, args.size)
    print(f"VM-UNet {params:,} parameters; {args.size}x{args.size}; Triton scan checkpoints every {block_t} steps")
    for label, dtype in (("bf16 autocast", torch.bfloat16), ("fp32", None)):
        per_image = _counting_forward(model, image, dtype)
        total = fixed + per_image * args.batch_size
        print(
            f"  {label:<13} saved for backward {per_image / 2**20:7.1f} MiB per image; batch {args.batch_size}: "
            f"{per_image * args.batch_size / 2**30:5.1f} GiB + {fixed / 2**30:.2f} GiB weights/grads/AdamW "
            f"= {total / 2**30:5.1f} GiB ({100 * total / (args.gpu_gib * 2**30):.0f}% of {args.gpu_gib:g} GiB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
