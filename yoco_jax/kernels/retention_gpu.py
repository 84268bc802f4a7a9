"""Chunkwise gated retention forward for GPUs (Pallas Triton), with a state in and out.

Math (per batch b and head h; ops/retention.py's conventions: log gates a_t <= 0, keys scaled by
s = d_k ** -0.5 in float32, the state S `[Dk, Dv]` float32). Time is cut into chunks of C tokens;
inside a chunk with queries Q, keys K `[C, Dk]`, values V `[C, Dv]` and in-chunk cumulative log
gates c_i = a_1 + ... + a_i (total c_C):

    D_ij = exp(c_i - c_j) if j <= i else 0                          [C, C]
    O    = ((Q K^T) s * D) V + (Q * exp(c)) S                        [C, Dv]
    S   <- exp(c_C) S + (K s * exp(c_C - c))^T V                     [Dk, Dv]

Every exponent is <= 0 (c is non-increasing), so nothing overflows however strong the gates.

Form: "fused chunk". One program per (batch, head, block of BV value columns) loops over the
chunks in order and carries its state slice `[Dk, BV]` in float32 registers; it writes the
outputs of each chunk and, at the end, its slice of the final state. fla's two-pass "chunk" form
instead computes every chunk's state in a first kernel (states `[N, Dk, Dv]` in HBM), then all
chunks' outputs in parallel. The fused form is simpler (one kernel, no state tensor in HBM, the
incoming state is just the loop's initial value) but its parallelism is only B x H x Dv / BV
programs: 48 at B 1, H 24, Dv 128, BV 64 on 132 SMs of an H100. That is fine at batch >= 3 or
many heads, weaker at small B x H, where a smaller BV (32) doubles the programs at the price of
recomputing Q K^T in each. bench/gpu_perf_retention.py measures a few tiles.

Precision: every dot accumulates in float32 with its operands in the input dtype. Q K^T, the
intra-chunk scores times V and the state update take q, k, v as they are (exact products) and
round the float32 factors (decayed scores, decayed queries and keys, the state S read by Q) to
the input dtype, as FlashAttention rounds its probabilities: in bfloat16 the output carries
~2^-9 relative rounding per term, the size of its own final rounding to bfloat16, while the
state stays float32. XLA's chunkwise form multiplies those in float32; in bfloat16 the two
differ by 3e-3 (output) and 2e-3 (final state) relative max (tests/kernels/test_retention_kernel.py:
< 1e-2 and 5e-3; and 1e-5 in float32, where this kernel rounds nothing; on
the GPU Triton's default float32 dot is TF32, as XLA's default precision on GPUs).

The wrapper pads T to a multiple of C with zero q, k, v and zero log gates (the state is
unchanged by them) and Dk, Dv to powers of two >= 16 (zero columns change no dot); the in-chunk
cumulative gates are computed once in XLA (a `[B, H, T]` float32 array, one cheap pass).
The backward (same form, same padding) is retention_gpu_backward.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from yoco_jax.kernels.common import fit_block, matmul, pad_axis, resolve_interpret, round_up


@dataclasses.dataclass(frozen=True)
class RetentionBlockSizes:
    """Tiles of the forward and backward kernels. chunk C and block_v BV are rounded down to
    powers of two >= 16 that fit the shapes; num_warps: Triton's. Forward: the state slice
    `[Dk, BV]` f32 plus a chunk's tiles fit the registers at Dk 128, BV 64 with 4 warps. The
    backward carries the same slice and reads twice the tiles per chunk (dO beside V), hence
    its smaller default BV. Unmeasured on a GPU: bench/gpu_perf_retention.py sweeps them."""

    chunk: int = 64
    block_v: int = 64
    num_warps: int = 4
    chunk_bwd: int = 64
    block_v_bwd: int = 32
    num_warps_bwd: int = 4


def _kernel(q_ref, k_ref, v_ref, cum_ref, s0_ref, o_ref, s_ref, *, chunk, scale):
    """q/k refs `[T, Dk]`, v/o `[T, BV]`, cum `[T]` f32 (one head's whole sequence), s0/s
    `[Dk, BV]` f32 (the state slice in and out)."""
    causal = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0) >= lax.broadcasted_iota(
        jnp.int32, (chunk, chunk), 1
    )
    last = lax.broadcasted_iota(jnp.int32, (chunk,), 0) == chunk - 1

    def step(n, state):
        rows = pl.ds(n * chunk, chunk)
        q, k, v, cum = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], cum_ref[rows]
        total = jnp.sum(jnp.where(last, cum, 0.0))  # c_C: no scalar indexing in Triton
        diff = jnp.where(causal, cum[:, None] - cum[None, :], -jnp.inf)
        scores = matmul(q, k, trans_b=True) * (scale * jnp.exp(diff))
        out = matmul(scores.astype(v.dtype), v)
        decayed_q = (q * jnp.exp(cum)[:, None]).astype(q.dtype)
        out += matmul(decayed_q, state.astype(q.dtype))
        o_ref[rows, :] = out.astype(o_ref.dtype)
        decayed_k = (k * (scale * jnp.exp(total - cum))[:, None]).astype(k.dtype)
        return jnp.exp(total) * state + matmul(decayed_k, v, trans_a=True)

    num_chunks = q_ref.shape[0] // chunk
    s_ref[...] = lax.fori_loop(0, num_chunks, step, s0_ref[...])


def in_chunk_cumsum(log_gate, chunk):
    """log_gate `[B, T, H]` (T a multiple of chunk) -> in-chunk cumulative sums `[B, H, T]` f32."""
    b, t, h = log_gate.shape
    cum = jnp.cumsum(log_gate.astype(jnp.float32).reshape(b, t // chunk, chunk, h), axis=2)
    return cum.reshape(b, t, h).transpose(0, 2, 1)


def tiles(t, dk, dv, chunk, block_v):
    """(C, BV, padded (T, Dk, Dv)) for the requested chunk and value block (module docstring)."""
    chunk = fit_block(1 << (max(chunk, 16).bit_length() - 1), t)
    dk_to, dv_to = fit_block(1 << 30, dk), fit_block(1 << 30, dv)
    bv = min(fit_block(1 << (max(block_v, 16).bit_length() - 1), dv), dv_to)
    return chunk, bv, (round_up(t, chunk), dk_to, dv_to)


def pad_inputs(q, k, v, log_gate, chunk, t_to, dk_to, dv_to):
    """q, k, v padded to `[B, t_to, H, dk_to | dv_to]` and the in-chunk cumulative gates."""
    q, k = (pad_axis(pad_axis(x, 1, t_to), 3, dk_to) for x in (q, k))
    v = pad_axis(pad_axis(v, 1, t_to), 3, dv_to)
    return q, k, v, in_chunk_cumsum(pad_axis(log_gate, 1, t_to), chunk)


def pad_state(state, dk_to, dv_to):
    return pad_axis(pad_axis(state.astype(jnp.float32), 2, dk_to), 3, dv_to)


def cost(b, h, t, chunk, dk, dv, bv, itemsize, passes):
    """pl.CostEstimate of `passes` sweeps over the chunks (forward 1; backward about 3: its two
    loops recompute the scores) by B x H x Dv / BV programs."""
    programs = b * h * (dv // bv)
    per_chunk = 2 * chunk * chunk * (dk + bv) + 4 * chunk * dk * bv
    return pl.CostEstimate(
        flops=passes * programs * (t // chunk) * per_chunk,
        transcendentals=passes * programs * t * (chunk + 2),
        bytes_accessed=passes * b * h * t * (2 * dk + 2 * dv) * itemsize,
    )


def retention_forward(
    q,
    k,
    v,
    log_gate,
    state=None,
    *,
    block_sizes: RetentionBlockSizes | None = None,
    interpret=None,
):
    """Gated retention forward by the Triton kernel (see the module docstring).

    q, k `[B, T, H, Dk]`, v `[B, T, H, Dv]` (one dtype), log_gate `[B, T, H]` (<= 0), state
    `[B, H, Dk, Dv]` float32 or None (zeros). Returns (out `[B, T, H, Dv]` in v's dtype, the
    final state `[B, H, Dk, Dv]` float32). block_sizes: `RetentionBlockSizes` (None: defaults);
    interpret: None interprets unless on a GPU.
    """
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    if k.shape != q.shape or v.shape[:3] != q.shape[:3] or log_gate.shape != q.shape[:3]:
        raise ValueError(
            f"retention_forward: expected q, k [B, T, H, Dk], v [B, T, H, Dv], log_gate "
            f"[B, T, H]; got {q.shape}, {k.shape}, {v.shape}, {log_gate.shape}."
        )
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(
            f"retention_forward: q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}."
        )
    if state is None:
        state = jnp.zeros((b, h, dk, dv), jnp.float32)
    if state.shape != (b, h, dk, dv):
        raise ValueError(f"retention_forward: state {state.shape} must be {(b, h, dk, dv)}.")
    sizes = block_sizes or RetentionBlockSizes()
    chunk, bv, (t_to, dk_to, dv_to) = tiles(t, dk, dv, sizes.chunk, sizes.block_v)
    q, k, v, cum = pad_inputs(q, k, v, log_gate, chunk, t_to, dk_to, dv_to)
    state = pad_state(state, dk_to, dv_to)

    qk_spec = pl.BlockSpec((None, t_to, None, dk_to), lambda b, h, j: (b, 0, h, 0))
    v_spec = pl.BlockSpec((None, t_to, None, bv), lambda b, h, j: (b, 0, h, j))
    cum_spec = pl.BlockSpec((None, None, t_to), lambda b, h, j: (b, h, 0))
    state_spec = pl.BlockSpec((None, None, dk_to, bv), lambda b, h, j: (b, h, 0, j))
    out, final = pl.pallas_call(
        functools.partial(_kernel, chunk=chunk, scale=dk**-0.5),
        grid=(b, h, dv_to // bv),
        in_specs=[qk_spec, qk_spec, v_spec, cum_spec, state_spec],
        out_specs=[v_spec, state_spec],
        out_shape=[
            jax.ShapeDtypeStruct(v.shape, v.dtype),
            jax.ShapeDtypeStruct(state.shape, jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=sizes.num_warps, num_stages=2),
        interpret=resolve_interpret(interpret, "gpu"),
        name="retention_fwd",
        cost_estimate=cost(b, h, t_to, chunk, dk_to, dv_to, bv, q.dtype.itemsize, passes=1),
    )(q, k, v, cum, state)
    return out[:, :t, :, :dv], final[:, :, :dk, :dv]
