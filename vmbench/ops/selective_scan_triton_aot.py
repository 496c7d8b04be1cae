"""Ahead-of-time compilation of the Triton scan kernels and a static look at their machine code.

Needs no GPU: Triton compiles for ``sm_<arch>`` with the ptxas bundled in its wheel, and the
bundled ``cuobjdump`` reads the result. Two uses:

* a check that the compiled path lowers at all (the interpreter the CPU tests use never runs
  Triton's compiler), and
* :func:`sass_profile`: registers, spilled bytes and the instruction mix of the kernels' main loop
  per (step, state, channel) element. These are static counts, not timings, but they are what tile
  sizes were chosen by before a GPU was available (``benchmarks/triton_sass.py`` prints a table;
  ``benchmarks/gpu_check.sh`` times the candidates on a GPU).

Must run in Triton's compiled mode (``TRITON_INTERPRET`` unset).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton

from vmbench.ops import selective_scan_triton as kernels

__all__ = ["SassProfile", "compile_for_target", "sass_profile"]

_TL_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# Pointers in the inputs' dtype; the rest (A, D, delta_bias, states, fp32 accumulators) are fp32.
_IO_POINTERS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}


def compile_for_target(
    arch: int = 90,
    dtype: torch.dtype = torch.float32,
    n_state: int = 16,
    length: int = 4096,
    channel_divisor: int = 192,
    b_const: bool = False,
    c_const: bool = False,
    has_d: bool = True,
    has_z: bool = False,
    has_bias: bool = True,
    softplus: bool = True,
    config: kernels.ScanConfig | None = None,
) -> dict:
    """Compile both kernels for CUDA ``sm_<arch>`` without a GPU.

    Defaults are VM-UNet's stage-1 call (192 channels per B/C group, N = 16, L = 4096, D and
    delta_bias, softplus). Returns ``{"fwd": kernel, "bwd": kernel}`` (Triton ``CompiledKernel``s;
    ``kernel.asm`` holds "ttgir", "ptx", "cubin") and the resolved :class:`Launch` under "launch".
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if kernels.INTERPRET:
        raise RuntimeError("compile_for_target needs Triton's compiled mode (TRITON_INTERPRET unset)")
    launch = kernels.scan_config(channel_divisor, length, n_state, channel_divisor, config)
    io = "*" + _TL_TYPES[dtype]
    flags = dict(B_CONST=b_const, C_CONST=c_const, HAS_D=has_d, HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=softplus)

    def build(fn, constexprs, warps):
        def arg_type(name: str) -> str:
            if name in constexprs:
                return "constexpr"
            if name.endswith("_ptr"):
                return io if name in _IO_POINTERS else "*fp32"
            return "i32"

        signature = {name: arg_type(name) for name in fn.arg_names}
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})

    tiles = dict(BLOCK_N=launch.block_n, BLOCK_T=launch.block_t)
    fwd = dict(flags, **tiles, BLOCK_D=launch.fwd_block_d, STORE_CKPT=True, STORE_LAST=False)
    bwd = dict(flags, **tiles, BLOCK_D=launch.bwd_block_d, DOT_SUMS=launch.dot_sums)
    return {
        "fwd": build(kernels._scan_fwd_kernel, fwd, launch.fwd_warps),
        "bwd": build(kernels._scan_bwd_kernel, bwd, launch.bwd_warps),
        "launch": launch,
    }


@dataclass(frozen=True)
class SassProfile:
    """Static facts about one compiled kernel; ``*_per_element`` count its main loop's instructions
    per (step, state, channel) element a thread handles in one iteration."""

    tile: str  # "BLOCK_T x BLOCK_N x BLOCK_D / warps"
    registers: int
    spill_bytes: int  # per-thread stack frame: local-memory spills (0 is what we want)
    loop_instructions: int
    elements_per_thread: float
    instructions_per_element: float
    shuffles_per_element: float  # SHFL: 1/4 of the FP32 issue rate on sm_90
    special_functions_per_element: float  # MUFU: exp2, log, reciprocal, ...
    shared_memory_ops_per_element: float  # LDS + STS: layout conversions and cross-warp sums
    barriers_in_loop: int


def _cuobjdump() -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: this triton wheel ships no cuobjdump")
    return path


def sass_profile(built: dict, which: str) -> SassProfile:
    """Registers, spills and the main loop's instruction mix of ``built[which]`` ("fwd" or "bwd"),
    ``built`` being what :func:`compile_for_target` returned.

    The main loop is the longest backward branch in the SASS (the loop over chunks); elements per
    thread = block_t * block_n * block_d / (32 * warps) with that kernel's tiles.
    """
    kernel, launch = built[which], built["launch"]
    block_d, warps = (launch.fwd_block_d, launch.fwd_warps) if which == "fwd" else (launch.bwd_block_d, launch.bwd_warps)
    tool = _cuobjdump()
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(kernel.asm["cubin"])
        resources = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", resources).group(1))
    spill = int(re.search(r"STACK:(\d+)", resources).group(1))
    instructions = [
        (int(address, 16), text)
        for address, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)
    ]
    loop = (0, -1)
    for address, text in instructions:
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address and address - int(target.group(1), 16) > loop[1] - loop[0]:
            loop = (int(target.group(1), 16), address)
    body = [text for address, text in instructions if loop[0] <= address <= loop[1]]
    opcodes = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0] for text in body)
    elements = launch.block_t * launch.block_n * block_d / (32 * warps)
    return SassProfile(
        tile=f"{launch.block_t}x{launch.block_n}x{block_d}/{warps}",
        registers=registers,
        spill_bytes=spill,
        loop_instructions=len(body),
        elements_per_thread=elements,
        instructions_per_element=len(body) / elements,
        shuffles_per_element=opcodes["SHFL"] / elements,
        special_functions_per_element=opcodes["MUFU"] / elements,
        shared_memory_ops_per_element=(opcodes["LDS"] + opcodes["STS"]) / elements,
        barriers_in_loop=opcodes["BAR"],
    )
