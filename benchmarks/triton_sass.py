"""Static machine-code table of the Triton scan kernels for tile configurations (no GPU needed).

    python benchmarks/triton_sass.py                      # defaults + a few alternatives, fp32, sm_90
    python benchmarks/triton_sass.py --dtype bf16 --arch 80 --configs "block_t=16,bwd_warps=8"

Each configuration is compiled for ``sm_<arch>`` at VM-UNet's stage-1 call (192 channels per B/C
group, N = 16, L = 4096) with the ptxas in the triton wheel; the table gives registers, spilled
bytes and, for the main loop, instructions, warp shuffles, special-function ops (exp2, log, ...)
and shared-memory ops per (step, state, channel) element. Static counts, not timings: they rank
candidates for ``benchmarks/gpu_check.sh`` to time on a GPU. Needs TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CANDIDATES = [
    "",  # the defaults
    "block_t=16,fwd_warps=4,bwd_warps=8",
    "block_t=16,bwd_block_d=8",
    "bwd_block_d=8,bwd_warps=2",
    "bwd_block_d=8,bwd_warps=1,fwd_warps=1",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=CANDIDATES, help="VMBENCH_TRITON_SCAN_CONFIG strings")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)

    import torch

    from vmbench.ops import selective_scan_triton as kernels
    from vmbench.ops.selective_scan_triton_aot import compile_for_target, sass_profile

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    print(f"sm_{args.arch}, {args.dtype} inputs, VM-UNet stage-1 call; per (t, n, d) element of the main loop")
    header = f"{'config':<44} {'kernel':<4} {'tile TxNxD/warps':<16} {'regs':>4} {'spill':>5} {'instr':>6} {'shfl':>5} {'mufu':>5} {'smem':>5}"
    print(header)
    print("-" * len(header))
    for text in args.configs:
        os.environ[kernels.CONFIG_ENV_VAR] = text
        built = compile_for_target(arch=args.arch, dtype=dtype, config=kernels._config_from_env())
        for name in ("fwd", "bwd"):
            p = sass_profile(built, name)
            print(
                f"{text or '(defaults)':<44} {name:<4} {p.tile:<16} {p.registers:>4} {p.spill_bytes:>5} "
                f"{p.instructions_per_element:>6.1f} {p.shuffles_per_element:>5.2f} "
                f"{p.special_functions_per_element:>5.2f} {p.shared_memory_ops_per_element:>5.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
