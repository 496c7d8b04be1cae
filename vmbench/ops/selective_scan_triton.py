"""Triton selective scan (Mamba-1 S6), forward and backward, for GPUs without mamba-ssm's build.

Same contract as the other backends (``selective_scan_ref``): u, delta (batch, dim, L); A (dim, N)
real; B, C each (dim, N), (batch, N, L) or grouped (batch, G, N, L); optional D, z, delta_bias;
softplus with threshold 20; u/delta/B/C/z in fp32, bf16 or fp16 with fp32 state and accumulation;
output in u's dtype, gradients in each input's dtype, the last state (fp32) without gradient.

Design (after mamba-ssm's ``csrc/selective_scan/selective_scan_{fwd,bwd}_kernel.cuh``,
``state-spaces/mamba`` tag ``v1.0.1``; aimed at the HBM floor that ``vmbench bench scan`` reports):

* **Grid** ``(dim // BLOCK_D, batch)``: one program owns BLOCK_D channels of one batch element and
  walks the sequence in chunks of BLOCK_T steps. BLOCK_D is a power of two dividing the channels
  per B/C group, so a program's channels share one group: B and C are loaded once per chunk as a
  (BLOCK_T, N) tile and broadcast over the channels. The channel-block axis is the fast grid axis,
  so programs running together read the same group's B/C rows (L2 hits).
* **Forward, per chunk**: a time-major (BLOCK_T, N, BLOCK_D) tile of decays exp(dt*A) and inputs
  dt*u*B; time is the slowest tile axis, so each thread holds the chunk's steps in registers and
  h_t = a_t*h_{t-1} + x_t runs as a plain recurrence unrolled over them, starting from the state
  carried in from the previous chunk. (``tl.associative_scan`` computes the same in principle but
  lowered to many warp shuffles: see ``vmbench.ops.selective_scan_triton_aot`` and
  ``benchmarks/triton_sass.py``.) Only decays <= 1 are multiplied (no cumsum/closed form), which
  is unconditionally stable: a closed form needs exp(sum dt*|A|), and with VM-UNet's initial
  dt <= 0.1 and |A| <= 16 that sum passes ln(FLT_MAX) = 88.7 within one 64-step chunk.
  y = sum_n h*C is reduced on chip; D*u and the silu(z) gate are applied before the one store. No (batch, dim, L, N) tensor exists anywhere: per program
  one (BLOCK_T, N, BLOCK_D) tile at a time.
* **Determinism**: the backward's atomic adds (below) follow ``torch.use_deterministic_algorithms``:
  an error (a warning with ``warn_only``) that names the torch backend.
* **Checkpoints**: when a gradient is needed the forward also stores the state entering every chunk,
  (batch, dim, ceil(L/BLOCK_T), N) fp32, N/BLOCK_T of u's size (2x at N = 16, BLOCK_T = 8).
* **Backward**, chunks in reverse order, per chunk: recompute the chunk's states from its checkpoint
  (the forward's recurrence again), then the adjoint g_t = C_t*dy_t + a_{t+1}*g_{t+1} backwards
  over the chunk's steps, from the adjoint carried in from the later chunk. a_{t+1} is the
  recomputed decay one row down, or for the last row the later chunk's first decay (carried like
  the adjoint), so the backward evaluates one exp per element, as mamba-ssm's CUDA backward does.
  The decay gradient g_t*a_t*h_{t-1} uses a_t*h_{t-1} = h_t - dt_t*u_t*B_t, as mamba-ssm does.
  du, ddelta (through softplus) and dz are stored per chunk; dA, dD, d(delta_bias) and
  constant-layout dB/dC are summed in registers over the whole sequence and added with one fp32
  ``tl.atomic_add`` per program (the programs of the other batch elements add to the same
  addresses). Time-varying dB/dC are summed over the program's channels on chip and added with
  ``tl.atomic_add`` into fp32 (batch, G, N, L) buffers: each address receives one add per channel
  block of its group (12 at VM-UNet's stage 1 with BLOCK_D = 16). The adds are relaxed (no memory
  fence: the sums are read only after the kernel); their order makes dA/dB/dC/dD/d(delta_bias)
  nondeterministic in the last bits.

Tile sizes (see :class:`ScanConfig`) were chosen from static machine-code counts, not yet timed on
a GPU; overridable with ``VMBENCH_TRITON_SCAN_CONFIG`` (e.g.
``block_t=16,fwd_block_d=16,bwd_block_d=16,fwd_warps=4,bwd_warps=8``); ``vmbench bench tune`` checks
and times the :data:`TUNING_CANDIDATES` on the GPU at hand.

The kernels are created when this module is imported, in Triton's compiled mode or, if
``TRITON_INTERPRET=1`` was set before ``triton`` was first imported, in its interpreter (CPU
tensors; how the tests run). The dispatcher in :mod:`vmbench.ops.selective_scan` imports this module
lazily and checks that the mode matches.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from vmbench.ops.determinism import alert_not_deterministic

__all__ = [
    "CONFIG_ENV_VAR",
    "INTERPRET",
    "Launch",
    "ScanConfig",
    "TUNING_CANDIDATES",
    "parse_config",
    "scan_config",
    "selective_scan_triton",
]


def _interpret_mode() -> bool:
    """Whether @triton.jit creates interpreter kernels now (read as Triton reads it)."""
    try:
        from triton import knobs  # triton >= 3.4
    except ImportError:
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return bool(knobs.runtime.interpret)


# Mode the @triton.jit decorators below are applied in (fixed for the life of this module).
INTERPRET: bool = _interpret_mode()
# Triton decorates its own library (tl.sum, ...) once, when triton is first imported; kernels of the
# other mode cannot call it.
if INTERPRET != (type(tl.standard.sum).__name__ == "InterpretedFunction"):
    raise ImportError(
        f"TRITON_INTERPRET is {int(INTERPRET)} now but was {int(not INTERPRET)} when triton was first imported "
        "in this process; set it before anything imports triton"
    )
CONFIG_ENV_VAR = "VMBENCH_TRITON_SCAN_CONFIG"

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e)): exp2 is the hardware unit


# ---------------------------------------------------------------------------------------------
# Kernels
#
# Tiles are time-major: (BLOCK_T, BLOCK_N, BLOCK_D) for the per-state quantities, (BLOCK_T,
# BLOCK_D) for per-channel rows (u, dt, y, ...), (BLOCK_T, BLOCK_N) for B and C. Triton spreads the
# fastest (last) axis over lanes, so time, the slowest axis, stays in each thread's registers and
# the recurrences along it run in-thread. Putting time last instead compiled (sm_90, ptxas) to ~3x
# the instructions per element, mostly warp shuffles.


@triton.jit
def _pick(tile, at):
    """Row ``at`` (a (BLOCK_T, 1, 1) mask true at one step) of a time-major tile, as (BLOCK_N, BLOCK_D).

    Time lies in each thread's registers and the unrolled step index is a constant, so the compiler
    folds the select to a register choice and the -0.0 terms of the sum to nothing (x + -0.0 == x).
    """
    return tl.sum(tl.where(at, tile, -0.0), axis=0)


@triton.jit
def _states_forward(decay, x, h, steps, BLOCK_T: tl.constexpr):
    """h_t = decay_t * h_{t-1} + x_t over one chunk from the entering state h: (states, last state).

    A sequential recurrence unrolled over the chunk's steps, in registers. The first version used
    ``tl.associative_scan``; on sm_90 with Triton 3.6 its reverse direction alone compiled to ~20
    warp shuffles per element, the largest cost of the backward.
    """
    states = x
    for j in tl.static_range(BLOCK_T):
        at = steps == j
        h = _pick(decay, at) * h + _pick(x, at)
        states = tl.where(at, h[None, :, :], states)
    return states, h


@triton.jit
def _sum_over_channels(tile, rows, DOT: tl.constexpr):
    """sum_d tile[t, n, d] * rows[t, d] as (BLOCK_T, BLOCK_N).

    With DOT, a batched fp32 (ieee) ``tl.dot`` against (rows | 0): Triton stages the operands
    through shared memory and sums the channels in-thread with FMAs, instead of a butterfly of warp
    shuffles per value (on sm_90 the shuffle unit issues a quarter of the FP32 rate). The zero
    column only pads the dot's width to two.
    """
    if DOT:
        total, _ = tl.split(tl.dot(tile, tl.join(rows, tl.zeros_like(rows)), input_precision="ieee"))
    else:
        total = tl.sum(tile * rows[:, None, :], axis=2)
    return total


@triton.jit
def _softplus(x):
    # torch / mamba-ssm softplus: log1p(exp(x)) for x <= 20, x above. log1p via Kahan's trick
    # (log(1+e) * e / ((1+e) - 1)) keeps full relative precision for very negative x, where
    # log(1 + e) would round to 0.
    e = tl.exp(tl.minimum(x, 20.0))
    one_plus = 1.0 + e
    safe_den = tl.where(one_plus == 1.0, 1.0, one_plus - 1.0)
    log1p = tl.where(one_plus == 1.0, e, tl.log(one_plus) * e / safe_den)
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _softplus_slope(x):
    # d softplus / dx with the same threshold.
    return tl.where(x > 20.0, 1.0, tl.sigmoid(x))


@triton.jit
def _load_step_sizes(delta_rows, t, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(BLOCK_T, BLOCK_D) raw delta (+ bias) and the step size dt; dt = 0 outside the sequence."""
    raw = tl.load(delta_rows[None, :] + t[:, None], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[None, :]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    # Steps past L get decay exp(0) = 1 and input 0: the state passes through them unchanged, so the
    # last row of a chunk's states is always the state at its last valid step.
    dt = tl.where(mask, dt, 0.0)
    return raw, dt


@triton.jit
def _channel_values(ptr, d, BLOCK_D: tl.constexpr, PRESENT: tl.constexpr):
    """A (dim,) parameter (D, delta_bias) for the block's channels in fp32; zeros if absent."""
    values = tl.zeros((BLOCK_D,), tl.float32)
    if PRESENT:
        values = tl.load(ptr + d).to(tl.float32)
    return values


@triton.jit
def _constant_bc(ptr, d, n, n_ok, s_channel, s_state, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CONST: tl.constexpr):
    """B or C in the constant (dim, N) layout as a (BLOCK_N, BLOCK_D) tile; zeros (unused) otherwise."""
    tile = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    if CONST:
        tile = tl.load(ptr + d[None, :] * s_channel + n[:, None] * s_state, mask=n_ok[:, None], other=0.0)
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _load_bc(rows, t, s_l, n_ok, t_ok, const_tile, CONST: tl.constexpr):
    """B or C for one chunk, shaped to broadcast against (BLOCK_T, BLOCK_N, BLOCK_D)."""
    if CONST:
        tile = const_tile[None, :, :]  # (1, BLOCK_N, BLOCK_D): per channel, time-invariant
    else:
        tile = tl.load(rows[None, :] + t[:, None] * s_l, mask=t_ok[:, None] & n_ok[None, :], other=0.0)
        tile = tile.to(tl.float32)[:, :, None]  # (BLOCK_T, BLOCK_N, 1): shared by the block's channels
    return tile


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, last_ptr, ckpt_ptr,
    dim, L, N, n_chunks,
    s_ub, s_ud, s_db, s_dd, s_zb, s_zd,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    B_PER_GROUP, C_PER_GROUP,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_CKPT: tl.constexpr, STORE_LAST: tl.constexpr,
):  # fmt: skip
    # int64 offsets: batch * dim * L exceeds 2^31 at large batches.
    pid_d = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    d0 = pid_d * BLOCK_D
    d = d0 + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N  # N is padded to a power of two; padded states have A = B = C = 0 and stay 0
    steps = tl.arange(0, BLOCK_T)
    state_idx = d[None, :] * N + n[:, None]  # (BLOCK_N, BLOCK_D) into (dim, N) parameters

    A2 = tl.load(A_ptr + state_idx, mask=n_ok[:, None], other=0.0).to(tl.float32) * LOG2E
    bias = _channel_values(bias_ptr, d, BLOCK_D, HAS_BIAS)
    D = _channel_values(D_ptr, d, BLOCK_D, HAS_D)

    u_rows = u_ptr + b * s_ub + d * s_ud
    delta_rows = delta_ptr + b * s_db + d * s_dd
    z_rows = z_ptr + b * s_zb + d * s_zd
    out_rows = out_ptr + (b * dim + d) * L  # outputs are allocated contiguous
    ckpt_idx = ((b * dim + d[None, :]) * n_chunks) * N + n[:, None]  # + c * N: state entering chunk c
    # Time-varying B/C: this block's group row pointers (one per state); constant: a (N, BLOCK_D) tile.
    # For the constant layout (dim, N), s_Bg / s_Cg is the channel stride.
    B_rows = B_ptr + b * s_Bb + (d0 // B_PER_GROUP) * s_Bg + n * s_Bn
    C_rows = C_ptr + b * s_Cb + (d0 // C_PER_GROUP) * s_Cg + n * s_Cn
    B_tile = _constant_bc(B_ptr, d, n, n_ok, s_Bg, s_Bn, BLOCK_N, BLOCK_D, B_CONST)
    C_tile = _constant_bc(C_ptr, d, n, n_ok, s_Cg, s_Cn, BLOCK_N, BLOCK_D, C_CONST)

    h = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)  # state entering the current chunk
    for c in range(n_chunks):
        t = c * BLOCK_T + steps
        t_ok = t < L
        mask = t_ok[:, None]
        if STORE_CKPT:
            tl.store(ckpt_ptr + ckpt_idx + c * N, h, mask=n_ok[:, None])
        u = tl.load(u_rows[None, :] + t[:, None], mask=mask, other=0.0).to(tl.float32)
        _, dt = _load_step_sizes(delta_rows, t, mask, bias, HAS_BIAS, SOFTPLUS)
        Bt = _load_bc(B_rows, t, s_Bl, n_ok, t_ok, B_tile, B_CONST)
        Ct = _load_bc(C_rows, t, s_Cl, n_ok, t_ok, C_tile, C_CONST)

        decay = tl.exp2(dt[:, None, :] * A2[None, :, :])  # exp(dt*A) via the exp2 unit
        x = (dt * u)[:, None, :] * Bt
        # Steps past L have decay 1 and input 0, so h leaves the chunk as the last valid state.
        states, h = _states_forward(decay, x, h, steps[:, None, None], BLOCK_T)
        y = tl.sum(states * Ct, axis=1)
        if HAS_D:
            y = y + D[None, :] * u
        if HAS_Z:
            zv = tl.load(z_rows[None, :] + t[:, None], mask=mask, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(out_rows[None, :] + t[:, None], y.to(out_ptr.dtype.element_ty), mask=mask)

    if STORE_LAST:
        tl.store(last_ptr + (b * dim + d[None, :]) * N + n[:, None], h, mask=n_ok[:, None])


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, ckpt_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, L, N, n_chunks,
    s_ub, s_ud, s_db, s_dd, s_zb, s_zd, s_ob, s_od,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_dBb, s_dBg, s_dCb, s_dCg,
    B_PER_GROUP, C_PER_GROUP,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    B_CONST: tl.constexpr, C_CONST: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    DOT_SUMS: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    d0 = pid_d * BLOCK_D
    d = d0 + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N
    steps = tl.arange(0, BLOCK_T)
    state_idx = d[None, :] * N + n[:, None]

    A = tl.load(A_ptr + state_idx, mask=n_ok[:, None], other=0.0).to(tl.float32)
    A2 = A * LOG2E
    bias = _channel_values(bias_ptr, d, BLOCK_D, HAS_BIAS)
    D = _channel_values(D_ptr, d, BLOCK_D, HAS_D)

    u_rows = u_ptr + b * s_ub + d * s_ud
    delta_rows = delta_ptr + b * s_db + d * s_dd
    z_rows = z_ptr + b * s_zb + d * s_zd
    dout_rows = dout_ptr + b * s_ob + d * s_od
    grad_rows = (b * dim + d) * L  # du, ddelta, dz are allocated contiguous
    ckpt_idx = ((b * dim + d[None, :]) * n_chunks) * N + n[:, None]
    B_group = d0 // B_PER_GROUP
    C_group = d0 // C_PER_GROUP
    B_rows = B_ptr + b * s_Bb + B_group * s_Bg + n * s_Bn
    C_rows = C_ptr + b * s_Cb + C_group * s_Cg + n * s_Cn
    B_tile = _constant_bc(B_ptr, d, n, n_ok, s_Bg, s_Bn, BLOCK_N, BLOCK_D, B_CONST)
    C_tile = _constant_bc(C_ptr, d, n, n_ok, s_Cg, s_Cn, BLOCK_N, BLOCK_D, C_CONST)
    # fp32 (batch, G, N, L) accumulators for time-varying dB/dC (contiguous in N and L).
    dB_rows = dB_ptr + b * s_dBb + B_group * s_dBg + n * L
    dC_rows = dC_ptr + b * s_dCb + C_group * s_dCg + n * L

    # Per-program sums over the whole sequence, flushed with one atomic add at the end.
    dA_acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dB_acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dC_acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), tl.float32)
    g_next = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)  # adjoint at the first step of the later chunk
    # Decay at the first step of the later chunk: a_{t+1} of this chunk's last step. Before the
    # last chunk it multiplies a zero adjoint, so its value there does not matter.
    decay_after = tl.full((BLOCK_N, BLOCK_D), 1.0, tl.float32)
    at_step = steps[:, None, None]

    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * BLOCK_T + steps
        t_ok = t < L
        mask = t_ok[:, None]
        u = tl.load(u_rows[None, :] + t[:, None], mask=mask, other=0.0).to(tl.float32)
        raw, dt = _load_step_sizes(delta_rows, t, mask, bias, HAS_BIAS, SOFTPLUS)
        Bt = _load_bc(B_rows, t, s_Bl, n_ok, t_ok, B_tile, B_CONST)
        Ct = _load_bc(C_rows, t, s_Cl, n_ok, t_ok, C_tile, C_CONST)

        # Recompute this chunk's states from its checkpoint, exactly as the forward did.
        h0 = tl.load(ckpt_ptr + ckpt_idx + c * N, mask=n_ok[:, None], other=0.0)
        decay = tl.exp2(dt[:, None, :] * A2[None, :, :])
        dtu = dt * u
        x = dtu[:, None, :] * Bt
        states, _ = _states_forward(decay, x, h0, at_step, BLOCK_T)

        dy = tl.load(dout_rows[None, :] + t[:, None], mask=mask, other=0.0).to(tl.float32)
        if HAS_Z:
            # out = y * silu(z): y (with the D skip) is recomputed here instead of being saved.
            y = tl.sum(states * Ct, axis=1)
            if HAS_D:
                y = y + D[None, :] * u
            zv = tl.load(z_rows[None, :] + t[:, None], mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zv)
            dz = dy * y * sig * (1.0 + zv * (1.0 - sig))
            tl.store(dz_ptr + grad_rows[None, :] + t[:, None], dz.to(dz_ptr.dtype.element_ty), mask=mask)
            dy = dy * zv * sig
        du = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=0)
            du = dy * D[None, :]

        # Adjoint of the states, g_t = C_t*dy_t + a_{t+1}*g_{t+1}, backwards over the chunk's steps
        # from the adjoint carried in from the later chunk. a_{t+1} is the recomputed decay one row
        # down, or the later chunk's first decay for the last row: one exp per element in all.
        dyC = dy[:, None, :] * Ct
        adj = dyC
        g = g_next
        decay_ahead = decay_after
        for k in tl.static_range(BLOCK_T):
            at = at_step == BLOCK_T - 1 - k
            g = _pick(dyC, at) + decay_ahead * g
            adj = tl.where(at, g[None, :, :], adj)
            decay_ahead = _pick(decay, at)
        g_next = g
        decay_after = decay_ahead

        # x_t = dt_t*u_t*B_t  ->  d(dt*u) and dB.
        d_dtu = tl.sum(adj * Bt, axis=1)
        # h_t = a_t*h_{t-1} + x_t with a_t = exp(dt_t*A): d(dt_t*A) = g_t * a_t*h_{t-1} = g_t*(h_t - x_t).
        d_exponent = adj * (states - x)
        dA_acc += tl.sum(d_exponent * dt[:, None, :], axis=0)
        d_dt = tl.sum(d_exponent * A[None, :, :], axis=1) + d_dtu * u
        du += d_dtu * dt
        if SOFTPLUS:
            d_dt = d_dt * _softplus_slope(raw)
        d_dt = tl.where(mask, d_dt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(d_dt, axis=0)
        tl.store(du_ptr + grad_rows[None, :] + t[:, None], du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddelta_ptr + grad_rows[None, :] + t[:, None], d_dt.to(ddelta_ptr.dtype.element_ty), mask=mask)

        # dB_t = sum over channels of g_t * dt_t*u_t; dC_t = sum over channels of dy_t * h_t.
        if B_CONST:
            dB_acc += tl.sum(adj * dtu[:, None, :], axis=0)
        else:
            part = _sum_over_channels(adj, dtu, DOT_SUMS)  # (BLOCK_T, BLOCK_N): this block's channels
            tl.atomic_add(dB_rows[None, :] + t[:, None], part, mask=t_ok[:, None] & n_ok[None, :], sem="relaxed")
        if C_CONST:
            dC_acc += tl.sum(states * dy[:, None, :], axis=0)
        else:
            part = _sum_over_channels(states, dy, DOT_SUMS)
            tl.atomic_add(dC_rows[None, :] + t[:, None], part, mask=t_ok[:, None] & n_ok[None, :], sem="relaxed")

    # Parameters are shared by all batch elements: one atomic add per program.
    tl.atomic_add(dA_ptr + state_idx, dA_acc, mask=n_ok[:, None], sem="relaxed")
    if B_CONST:
        tl.atomic_add(dB_ptr + state_idx, dB_acc, mask=n_ok[:, None], sem="relaxed")
    if C_CONST:
        tl.atomic_add(dC_ptr + state_idx, dC_acc, mask=n_ok[:, None], sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + d, dD_acc, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + d, dbias_acc, sem="relaxed")


# ---------------------------------------------------------------------------------------------
# Launch configuration


@dataclass(frozen=True)
class ScanConfig:
    """Tile sizes. Defaults chosen from static sm_90 machine code (Triton 3.6 and 3.9, VM-UNet's
    stage-1 call; ``benchmarks/triton_sass.py``), not yet timed on a GPU.

    Forward (8, 16) x 2 warps: 156 registers, ~15 main-loop instructions per (t, n, d) element.
    Backward (8, 16) x 4 warps: ~160 registers, ~53 per element, ~10 of them warp shuffles (the sums
    over channels for dB/dC and over states for du/ddelta); no spills in fp32 or bf16. Larger tiles
    lower the count a little but spill or drop occupancy (255 registers, 8 warps per SM).
    ``dot_sums=1`` does the backward's dB/dC channel sums as a tl.dot: ~46 instructions and ~2.4
    shuffles per element but twice the shared-memory traffic; off until a GPU has timed both.
    """

    block_t: int = 8  # time steps per chunk and per checkpoint (checkpoints: N / block_t of u's size)
    fwd_block_d: int = 16  # channels per forward program, upper bound (the actual value divides the group)
    bwd_block_d: int = 16  # same for the backward; dB/dC get one atomic add per block of a group
    max_tile: int = 4096  # upper bound on BLOCK_T * BLOCK_N * BLOCK_D (registers per 3-D tile)
    fwd_warps: int = 2
    bwd_warps: int = 4
    dot_sums: int = 0  # 1: the backward sums dB/dC over channels with a tl.dot (see _sum_over_channels)


DEFAULT_CONFIG = ScanConfig()
_SWITCHES = ("dot_sums",)  # 0 or 1


def parse_config(text: str) -> ScanConfig:
    """A :class:`ScanConfig` from ``key=value`` pairs separated by commas (empty: the defaults)."""
    text = text.strip()
    if not text:
        return DEFAULT_CONFIG
    values = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        smallest = 0 if key in _SWITCHES else 1
        if key not in ScanConfig.__dataclass_fields__ or not value.isdigit() or int(value) < smallest:
            raise ValueError(
                f"{CONFIG_ENV_VAR}={text!r}: expected comma-separated key=value pairs, positive integers for "
                f"{', '.join(k for k in ScanConfig.__dataclass_fields__ if k not in _SWITCHES)} and 0/1 for "
                f"{', '.join(_SWITCHES)}"
            )
        values[key] = int(value)
    return replace(DEFAULT_CONFIG, **values)


def _config_from_env() -> ScanConfig:
    return parse_config(os.environ.get(CONFIG_ENV_VAR, ""))


# What `vmbench bench tune` times when given no candidates, ranked by static machine-code counts
# (benchmarks/triton_sass.py): the defaults; the fewest instructions per element at 255 registers
# (one warp); two between; longer chunks with more warps; the backward's channel sums as a tl.dot
# (fewer shuffles, more shared-memory traffic), also with twice the channels per program.
TUNING_CANDIDATES: tuple[str, ...] = (
    "",
    "fwd_warps=1,bwd_block_d=8,bwd_warps=1",
    "bwd_block_d=8,bwd_warps=2",
    "block_t=16,fwd_warps=4,bwd_warps=8",
    "dot_sums=1",
    "dot_sums=1,bwd_block_d=32",
)


def _pow2_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


@dataclass(frozen=True)
class Launch:
    """Resolved tile sizes of one call."""

    fwd_block_d: int
    bwd_block_d: int
    block_n: int
    block_t: int
    n_chunks: int
    fwd_warps: int
    bwd_warps: int
    dot_sums: bool = False


def scan_config(dim: int, length: int, n_state: int, channel_divisor: int, config: ScanConfig | None = None) -> Launch:
    """Tile sizes for a call. ``channel_divisor``: gcd of dim and the channels per B/C group.

    BLOCK_D is a power of two dividing it, so that one program's channels share a B/C group and
    dim splits evenly; BLOCK_T is capped near the sequence length so short sequences do not scan
    padding; BLOCK_D shrinks for large N to keep the 3-D tiles within ``max_tile``.
    """
    cfg = config or _config_from_env()
    block_n = triton.next_power_of_2(n_state)
    block_t = max(1, min(_pow2_at_most(cfg.block_t), triton.next_power_of_2(length)))
    divisor_pow2 = channel_divisor & -channel_divisor  # largest power of two dividing it
    by_tile = _pow2_at_most(max(cfg.max_tile // (block_n * block_t), 1))

    def block_d(limit: int) -> int:
        return max(1, min(divisor_pow2, _pow2_at_most(limit), by_tile))

    bwd_d = block_d(cfg.bwd_block_d)
    return Launch(
        block_d(cfg.fwd_block_d),
        bwd_d,
        block_n,
        block_t,
        math.ceil(length / block_t),
        cfg.fwd_warps,
        cfg.bwd_warps,
        # tl.dot wants at least 16 rows and 16 reduced entries (states x channels) per step.
        dot_sums=bool(cfg.dot_sums) and block_n >= 16 and bwd_d >= 16,
    )


# ---------------------------------------------------------------------------------------------
# Host side


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(batch, dim, L) with unit time stride (the kernels address time as contiguous)."""
    return t if t.stride(-1) == 1 else t.contiguous()


class _Layout:
    """One of B / C as the kernels see it: 4-D strides plus channels per group, or constant."""

    def __init__(self, t: torch.Tensor, dim: int):
        self.tensor = t
        self.const = t.dim() == 2
        if self.const:  # (dim, N): strides (unused, channel, state, unused)
            self.strides = (0, t.stride(0), t.stride(1), 0)
            self.groups = dim
        else:
            t4 = t.unsqueeze(1) if t.dim() == 3 else t  # (batch, N, L) is one group
            self.strides = tuple(t4.stride())
            self.groups = t4.shape[1]
        self.per_group = dim // self.groups

    def grad_buffer(self, batch: int, n_state: int, length: int) -> torch.Tensor:
        """Zeroed fp32 accumulator: (dim, N) for the constant layout, else (batch, G, N, L)."""
        if self.const:
            return torch.zeros(self.tensor.shape, dtype=torch.float32, device=self.tensor.device)
        return torch.zeros((batch, self.groups, n_state, length), dtype=torch.float32, device=self.tensor.device)

    def grad_to_layout(self, grad: torch.Tensor) -> torch.Tensor:
        if self.tensor.dim() == 3:
            grad = grad.squeeze(1)
        return grad.to(self.tensor.dtype)


def _prepare(u, delta, A, B, C, launch: Launch | None = None):
    batch, dim, length = u.shape
    n_state = A.shape[1]
    Bl, Cl = _Layout(B, dim), _Layout(C, dim)
    if launch is None:
        divisor = math.gcd(dim, Bl.per_group if not Bl.const else dim, Cl.per_group if not Cl.const else dim)
        launch = scan_config(dim, length, n_state, divisor)
    return batch, dim, length, n_state, Bl, Cl, launch


def _check_mode(device: torch.device) -> None:
    if _interpret_mode() != INTERPRET:
        raise RuntimeError(
            "vmbench's Triton scan kernels were created with TRITON_INTERPRET="
            f"{int(INTERPRET)} but it is now {int(_interpret_mode())}; set TRITON_INTERPRET before "
            "triton and vmbench.ops.selective_scan_triton are first imported"
        )
    if not INTERPRET and device.type != "cuda":
        raise RuntimeError(f"the Triton scan needs CUDA tensors (or TRITON_INTERPRET=1), got {device.type}")


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, store_ckpt):
    batch, dim, length, n_state, Bl, Cl, cfg = _prepare(u, delta, A, B, C)
    u, delta = _rows(u), _rows(delta)
    z = _rows(z) if z is not None else None
    A = A.contiguous()
    out = torch.empty((batch, dim, length), dtype=u.dtype, device=u.device)
    last = torch.empty((batch, dim, n_state), dtype=torch.float32, device=u.device) if return_last_state else out
    ckpt = (
        torch.empty((batch, dim, cfg.n_chunks, n_state), dtype=torch.float32, device=u.device) if store_ckpt else out
    )
    zz = z if z is not None else u  # dummy pointers for absent optional inputs (never read)
    grid = (dim // cfg.fwd_block_d, batch)
    _scan_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A,
        out, last, ckpt,
        dim, length, n_state, cfg.n_chunks,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
        *Bl.strides, *Cl.strides,
        Bl.per_group, Cl.per_group,
        BLOCK_D=cfg.fwd_block_d, BLOCK_N=cfg.block_n, BLOCK_T=cfg.block_t,
        B_CONST=Bl.const, C_CONST=Cl.const,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        STORE_CKPT=store_ckpt, STORE_LAST=bool(return_last_state),
        num_warps=cfg.fwd_warps,
    )  # fmt: skip
    return out, (last if return_last_state else None), (ckpt if store_ckpt else None), cfg


NONDETERMINISTIC = (
    "the Triton selective scan's backward adds dA, dB, dC, dD and d(delta_bias) up with atomic adds"
)


class SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        out, last, ckpt, launch = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, True)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.launch = launch  # the backward must walk the checkpoints' chunks
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        if return_last_state:
            ctx.mark_non_differentiable(last)
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *unused_last_state_grad):  # the last state's gradient is ignored, as in mamba-ssm
        alert_not_deterministic(NONDETERMINISTIC)
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
            return SelectiveScanTriton._backward(ctx, dout, u, delta, A, B, C, D, z, delta_bias, ckpt)

    @staticmethod
    def _backward(ctx, dout, u, delta, A, B, C, D, z, delta_bias, ckpt):
        batch, dim, length, n_state, Bl, Cl, cfg = _prepare(u, delta, A, B, C, ctx.launch)
        u, delta, dout = _rows(u), _rows(delta), _rows(dout)
        z = _rows(z) if z is not None else None
        A = A.contiguous()
        dev = u.device
        du = torch.empty((batch, dim, length), dtype=u.dtype, device=dev)
        ddelta = torch.empty((batch, dim, length), dtype=delta.dtype, device=dev)
        dz = torch.empty((batch, dim, length), dtype=z.dtype, device=dev) if z is not None else du
        # Reductions across programs go through fp32 atomics into zeroed buffers.
        dA = torch.zeros((dim, n_state), dtype=torch.float32, device=dev)
        dB, dC = Bl.grad_buffer(batch, n_state, length), Cl.grad_buffer(batch, n_state, length)
        dD = torch.zeros((dim,), dtype=torch.float32, device=dev) if D is not None else dA
        dbias = torch.zeros((dim,), dtype=torch.float32, device=dev) if delta_bias is not None else dA
        zz = z if z is not None else u
        grid = (dim // cfg.bwd_block_d, batch)
        _scan_bwd_kernel[grid](
            u, delta, A, B, C, D if D is not None else A, zz, delta_bias if delta_bias is not None else A, dout, ckpt,
            du, ddelta, dz, dA, dB, dC, dD, dbias,
            dim, length, n_state, cfg.n_chunks,
            u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
            dout.stride(0), dout.stride(1),
            *Bl.strides, *Cl.strides,
            dB.stride(0) if not Bl.const else 0, dB.stride(1) if not Bl.const else 0,
            dC.stride(0) if not Cl.const else 0, dC.stride(1) if not Cl.const else 0,
            Bl.per_group, Cl.per_group,
            BLOCK_D=cfg.bwd_block_d, BLOCK_N=cfg.block_n, BLOCK_T=cfg.block_t,
            B_CONST=Bl.const, C_CONST=Cl.const,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.delta_softplus,
            DOT_SUMS=cfg.dot_sums,
            num_warps=cfg.bwd_warps,
        )  # fmt: skip
        return (
            du,
            ddelta,
            dA.to(A.dtype),
            Bl.grad_to_layout(dB),
            Cl.grad_to_layout(dC),
            dD.to(D.dtype) if D is not None else None,
            dz if z is not None else None,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None,
            None,
            None,
        )


def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The selective scan on Triton kernels; arguments as :func:`vmbench.ops.selective_scan`.

    Shapes are assumed validated by the dispatcher. fp64 is not supported (fp32 compute).
    """
    _check_mode(u.device)
    if u.dtype == torch.float64 or A.is_complex():
        raise TypeError("the Triton selective scan computes in fp32: fp64 or complex inputs need the torch backend")
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    # Triton launches on the current CUDA device: make it the inputs' one.
    device_guard = torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext()
    with device_guard:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        # No graph: skip the checkpoints.
        out, last, _, _ = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, False)
    return (out, last) if return_last_state else out
