"""Chunkwise gated retention backward for GPUs (Pallas Triton): the VJP of retention_gpu.py.

Math (per batch b and head h, retention_gpu.py's notation: chunks of C tokens, in-chunk
cumulative log gates c, decay matrix D, key scale s, S_n the state before chunk n). Given the
output cotangent dO and the final state's cotangent dS_N, the state cotangent runs backwards,
dS_n = exp(c_C) dS_{n+1} + (Q * exp(c))^T dO_n, and with P = (dO V^T) s * D   [C, C]:

    dQ = P K + (dO S_n^T) * exp(c)                                  [C, Dk]
    dK = P^T Q + (V dS_{n+1}^T) * s exp(c_C - c)                    [C, Dk]
    dV = ((Q K^T) s * D)^T dO + (K s * exp(c_C - c)) dS_{n+1}       [C, Dv]

and dS_0 is the incoming state's cotangent. The log gates enter only through exponentials of
cumulative sums b_t = a_1 + ... + a_t over the whole sequence (the in-chunk form is the same
function): every term of o_t carries exp(b_t), the term of k_j carries exp(-b_j), and every term
of the final state exp(b_T), so d/db_t = q_t . dq_t - k_t . dk_t (+ <dS_N, S_N> at t = T) and
da_t = sum_{t' >= t} d/db_t' (a reverse cumulative sum, in XLA; fla computes its gates'
gradient the same way).

Form: "fused chunk", like the forward. One program per (batch, head, block of BV value columns)
sweeps the chunks forwards carrying S `[Dk, BV]` (writing dQ), then backwards carrying dS
(writing dK, dV, and dS_0 at the end). dQ and dK sum over the value columns, so each program
writes its partial `[T, Dk]` in float32 and XLA sums the Dv / BV partials. Precision as the
forward: operands of every dot in the input dtype, float32 accumulation and states.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from yoco_jax.kernels.common import matmul, pad_axis, resolve_interpret
from yoco_jax.kernels.retention_gpu import (
    RetentionBlockSizes,
    cost,
    pad_inputs,
    pad_state,
    tiles,
)


def _kernel(
    q_ref,
    k_ref,
    v_ref,
    do_ref,
    cum_ref,
    s0_ref,
    ds_ref,
    dq_ref,
    dk_ref,
    dv_ref,
    ds0_ref,
    *,
    chunk,
    scale,
):
    """q/k `[T, Dk]`, v/do/dv `[T, BV]`, cum `[T]` f32, s0/ds/ds0 `[Dk, BV]` f32 (state in, the
    final state's cotangent, the incoming state's cotangent), dq/dk `[T, Dk]` f32 partials."""
    causal = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0) >= lax.broadcasted_iota(
        jnp.int32, (chunk, chunk), 1
    )
    last = lax.broadcasted_iota(jnp.int32, (chunk,), 0) == chunk - 1
    num_chunks = q_ref.shape[0] // chunk

    def load(n):
        rows = pl.ds(n * chunk, chunk)
        q, k, v, do = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], do_ref[rows, :]
        cum = cum_ref[rows]
        total = jnp.sum(jnp.where(last, cum, 0.0))  # c_C: no scalar indexing in Triton
        decay = scale * jnp.exp(jnp.where(causal, cum[:, None] - cum[None, :], -jnp.inf))
        p = matmul(do, v, trans_b=True) * decay  # [C, C]: dO_i . v_j s D_ij
        return rows, q, k, v, do, cum, total, decay, p.astype(q.dtype)

    def forwards(n, state):
        rows, q, k, v, do, cum, total, _, p = load(n)
        dq = matmul(p, k) + matmul(do, state.astype(do.dtype), trans_b=True) * jnp.exp(cum)[:, None]
        dq_ref[rows, :] = dq
        decayed_k = (k * (scale * jnp.exp(total - cum))[:, None]).astype(k.dtype)
        return jnp.exp(total) * state + matmul(decayed_k, v, trans_a=True)

    def backwards(i, d_state):
        rows, q, k, v, do, cum, total, decay, p = load(num_chunks - 1 - i)
        to_end = scale * jnp.exp(total - cum)[:, None]
        d_state_in = d_state.astype(v.dtype)
        dk_ref[rows, :] = matmul(p, q, trans_a=True) + matmul(v, d_state_in, trans_b=True) * to_end
        scores = (matmul(q, k, trans_b=True) * decay).astype(do.dtype)
        dv = matmul(scores, do, trans_a=True) + matmul((k * to_end).astype(k.dtype), d_state_in)
        dv_ref[rows, :] = dv.astype(dv_ref.dtype)
        decayed_q = (q * jnp.exp(cum)[:, None]).astype(q.dtype)
        return jnp.exp(total) * d_state + matmul(decayed_q, do, trans_a=True)

    lax.fori_loop(0, num_chunks, forwards, s0_ref[...])
    ds0_ref[...] = lax.fori_loop(0, num_chunks, backwards, ds_ref[...])


def retention_backward(
    q,
    k,
    v,
    log_gate,
    state,
    final_state,
    d_out,
    d_final_state,
    *,
    block_sizes: RetentionBlockSizes | None = None,
    interpret=None,
):
    """The VJP of `retention_forward` (see the module docstring).

    q, k `[B, T, H, Dk]`, v and d_out `[B, T, H, Dv]` (one dtype), log_gate `[B, T, H]`, state
    (incoming), final_state (the forward's) and d_final_state `[B, H, Dk, Dv]` float32. Returns
    (dq, dk, dv, d_log_gate, d_state) in the dtypes of q, k, v, log_gate and float32.
    """
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    sizes = block_sizes or RetentionBlockSizes()
    chunk, bv, (t_to, dk_to, dv_to) = tiles(t, dk, dv, sizes.chunk_bwd, sizes.block_v_bwd)
    qp, kp, vp, cum = pad_inputs(q, k, v, log_gate, chunk, t_to, dk_to, dv_to)
    do = pad_axis(pad_axis(d_out.astype(v.dtype), 1, t_to), 3, dv_to)
    s0, ds = pad_state(state, dk_to, dv_to), pad_state(d_final_state, dk_to, dv_to)
    nv = dv_to // bv

    qk_spec = pl.BlockSpec((None, t_to, None, dk_to), lambda b, h, j: (b, 0, h, 0))
    v_spec = pl.BlockSpec((None, t_to, None, bv), lambda b, h, j: (b, 0, h, j))
    cum_spec = pl.BlockSpec((None, None, t_to), lambda b, h, j: (b, h, 0))
    state_spec = pl.BlockSpec((None, None, dk_to, bv), lambda b, h, j: (b, h, 0, j))
    partial_spec = pl.BlockSpec((None, None, t_to, None, dk_to), lambda b, h, j: (j, b, 0, h, 0))
    partial = jax.ShapeDtypeStruct((nv, b, t_to, h, dk_to), jnp.float32)
    state_shape = jax.ShapeDtypeStruct(s0.shape, jnp.float32)
    dq, dk_, dv_, ds0 = pl.pallas_call(
        functools.partial(_kernel, chunk=chunk, scale=dk**-0.5),
        grid=(b, h, nv),
        in_specs=[qk_spec, qk_spec, v_spec, v_spec, cum_spec, state_spec, state_spec],
        out_specs=[partial_spec, partial_spec, v_spec, state_spec],
        out_shape=[partial, partial, jax.ShapeDtypeStruct(vp.shape, v.dtype), state_shape],
        compiler_params=plgpu.CompilerParams(num_warps=sizes.num_warps_bwd, num_stages=2),
        interpret=resolve_interpret(interpret, "gpu"),
        name="retention_bwd",
        cost_estimate=cost(b, h, t_to, chunk, dk_to, dv_to, bv, q.dtype.itemsize, passes=3),
    )(qp, kp, vp, do, cum, s0, ds)
    dq, dk_ = dq.sum(0)[:, :t, :, :dk], dk_.sum(0)[:, :t, :, :dk]
    f32 = lambda x: x.astype(jnp.float32)
    d_cum = jnp.sum(f32(q) * dq - f32(k) * dk_, axis=-1)  # [B, T, H]
    d_gate = jnp.flip(jnp.cumsum(jnp.flip(d_cum, 1), axis=1), 1)
    d_gate += jnp.sum(f32(d_final_state) * final_state, axis=(2, 3))[:, None, :]
    return (
        dq.astype(q.dtype),
        dk_.astype(k.dtype),
        dv_[:, :t, :, :dv],
        d_gate.astype(log_gate.dtype),
        ds0[:, :, :dk, :dv],
    )
