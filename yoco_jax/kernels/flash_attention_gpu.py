"""Flash attention forward and backward for GPUs, written for Pallas' Triton backend.

Why Triton and not Mosaic GPU (`plgpu.kernel`): `pl.pallas_call` with Triton compiler params works
unchanged on JAX 0.10 and 0.11 (deprecated but present in 0.11) and on every NVIDIA GPU from Ampere
on (and ROCm), and it also runs on CPU in interpret mode, so the same code is tested here. Mosaic
GPU targets Hopper/Blackwell only, its API moved between 0.10 and 0.11, and it cannot be
interpreted on CPU. Triton reaches good (not best-in-class) FlashAttention-2 speed on H100.

Layout (see common.py): queries are GQA-folded rows `[B, Hkv, R, D]`; K/V stay in the model's
`[B, Tk, Hkv, D]` layout (a program reads its kv head with a strided BlockSpec). R and Tk are
padded to multiples of the block sizes and D to a power of two >= 16 by the caller.

Kernels (one program per (row block | key block, batch, kv head)):
- forward: loop over the visible key blocks with an online softmax; writes out and the base-2
  logsumexp of every row;
- backward dK/dV: a key block loops over the row blocks that see it (all G heads of the group);
- backward dQ: a row block loops over its visible key blocks again (FlashAttention-2 style,
  recomputing probabilities from the logsumexp; no atomics).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from yoco_jax.kernels import flash_attention_bounds as bounds
from yoco_jax.kernels.common import LOG2E, matmul, online_softmax_step


def compiler_params():
    # bench/attention_tune.py on an H200 (head_dim 128, 32K): 4 warps and 2 stages win for the
    # default tiles (forward 128x64: 478 vs 378 TFLOP/s with 8 warps; backward 64x64), and 3
    # stages overflow shared memory at 128-row tiles.
    return plgpu.CompilerParams(num_warps=4, num_stages=2)


def _band(refs, cfg):
    """(band, the other refs): with `cfg.traced` the refs start with q_offset and kv_start."""
    if not cfg.traced:
        return bounds.band(cfg), refs
    return bounds.band(cfg, refs[0][()], refs[1][()]), refs[2:]


def _bound_inputs(traced_bounds):
    """Extra leading inputs and BlockSpecs: the two traced scalars, or nothing."""
    if traced_bounds is None:
        return [], []
    scalar = lambda n: pl.BlockSpec((None,), lambda *_: (n,))
    return [traced_bounds, traced_bounds], [scalar(0), scalar(1)]


def _forward_kernel(*refs, cfg):
    """q_ref `[BM, D]` rows, k_ref/v_ref `[Tk, D]`, o_ref `[BM, D]`, lse_ref `[BM, 1]`."""
    bd, (q_ref, k_ref, v_ref, o_ref, lse_ref) = _band(refs, cfg)
    block_rows, block_keys = cfg.block_rows, cfg.block_keys
    row0 = pl.program_id(0) * block_rows
    num_key_blocks = k_ref.shape[0] // block_keys
    q = q_ref[...]
    scale = cfg.sm_scale * LOG2E

    def body(masked):
        def step(j, carry):
            key0 = j * block_keys
            keys = pl.ds(key0, block_keys)
            s = matmul(q, k_ref[keys, :], trans_b=True) * scale
            if masked:
                mask = bounds.tile_mask(bd, row0, key0, block_rows, block_keys)
                s = jnp.where(mask, s, -jnp.inf)
            return online_softmax_step(*carry, s, v_ref[keys, :])

        return step

    first, end = bounds.key_blocks(bd, row0, block_rows, block_keys, num_key_blocks)
    # Only the blocks on the edges of the causal / window band pay for the mask.
    full_first, full_end = bounds.full_key_blocks(bd, row0, block_rows, block_keys, first, end)
    carry = (
        jnp.zeros(o_ref.shape, jnp.float32),
        jnp.full((block_rows, 1), -jnp.inf, jnp.float32),
        jnp.zeros((block_rows, 1), jnp.float32),
    )
    carry = lax.fori_loop(first, full_first, body(masked=True), carry)
    carry = lax.fori_loop(full_first, full_end, body(masked=False), carry)
    acc, m, denom = lax.fori_loop(full_end, end, body(masked=True), carry)
    seen = denom > 0.0
    o_ref[...] = jnp.where(seen, acc / jnp.where(seen, denom, 1.0), 0.0).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log2(denom)


def forward(q, k, v, cfg, traced_bounds=None):
    """q `[B, Hkv, R, D]`, k/v `[B, Tk, Hkv, D]` -> out `[B, Hkv, R, D]`, lse `[B, Hkv, R, 1]`.

    traced_bounds: int32 `[2]` (q_offset, kv_start) when `cfg.traced`, else None."""
    batch, num_kv_heads, num_rows, head_dim = q.shape
    kv_len = k.shape[1]
    block_rows = cfg.block_rows
    row_spec = pl.BlockSpec((None, None, block_rows, head_dim), lambda i, b, h: (b, h, i, 0))
    kv_spec = pl.BlockSpec((None, kv_len, None, head_dim), lambda i, b, h: (b, 0, h, 0))
    lse_spec = pl.BlockSpec((None, None, block_rows, 1), lambda i, b, h: (b, h, i, 0))
    extra, extra_specs = _bound_inputs(traced_bounds)
    return pl.pallas_call(
        functools.partial(_forward_kernel, cfg=cfg),
        grid=(num_rows // block_rows, batch, num_kv_heads),
        in_specs=[*extra_specs, row_spec, kv_spec, kv_spec],
        out_specs=[row_spec, lse_spec],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((batch, num_kv_heads, num_rows, 1), jnp.float32),
        ],
        compiler_params=compiler_params(),
        interpret=cfg.interpret,
        name="flash_attention_fwd",
    )(*extra, q, k, v)


def _probabilities(q, k, lse, row0, key0, block_rows, block_keys, cfg, bd):
    """Recomputed attention probabilities of one tile `[rows, keys]` (0 where masked)."""
    s = matmul(q, k, trans_b=True) * (cfg.sm_scale * LOG2E)
    mask = bounds.tile_mask(bd, row0, key0, block_rows, block_keys)
    # Rows with no visible key have lse = -inf; `where` (not a product) keeps them at 0.
    return jnp.where(mask, jnp.exp2(s - lse), 0.0)


def _dkdv_kernel(*refs, cfg):
    """k/v/dk/dv refs `[BN, D]` (one key block); q/do `[R, D]`, lse/delta `[R, 1]` (all rows)."""
    bd, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref) = _band(refs, cfg)
    block_rows, block_keys = cfg.block_rows_bwd, cfg.block_keys_bwd
    key0 = pl.program_id(0) * block_keys
    num_row_blocks = q_ref.shape[0] // block_rows
    k, v = k_ref[...], v_ref[...]

    def body(i, carry):
        dk, dv = carry
        row0 = i * block_rows
        rows = pl.ds(row0, block_rows)
        q, do = q_ref[rows, :], do_ref[rows, :]
        p = _probabilities(q, k, lse_ref[rows, :], row0, key0, block_rows, block_keys, cfg, bd)
        dv += matmul(p.astype(do.dtype), do, trans_a=True)
        ds = p * (matmul(do, v, trans_b=True) - delta_ref[rows, :])
        dk += matmul(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    first, end = bounds.row_blocks(bd, key0, block_keys, block_rows, num_row_blocks)
    zeros = jnp.zeros(k_ref.shape, jnp.float32)
    dk, dv = lax.fori_loop(first, end, body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg):
    """q/do/dq refs `[BM, D]`, lse/delta `[BM, 1]` (one row block); k/v `[Tk, D]`."""
    bd, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref) = _band(refs, cfg)
    block_rows, block_keys = cfg.block_rows_bwd, cfg.block_keys_bwd
    row0 = pl.program_id(0) * block_rows
    num_key_blocks = k_ref.shape[0] // block_keys
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]

    def body(j, dq):
        key0 = j * block_keys
        keys = pl.ds(key0, block_keys)
        k = k_ref[keys, :]
        p = _probabilities(q, k, lse, row0, key0, block_rows, block_keys, cfg, bd)
        ds = p * (matmul(do, v_ref[keys, :], trans_b=True) - delta)
        return dq + matmul(ds.astype(k.dtype), k)

    first, end = bounds.key_blocks(bd, row0, block_rows, block_keys, num_key_blocks)
    dq = lax.fori_loop(first, end, body, jnp.zeros(q_ref.shape, jnp.float32))
    dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)


def backward(q, k, v, lse, delta, do, cfg, traced_bounds=None):
    """Gradients of `forward` given dO (`[B, Hkv, R, D]`) and delta = rowsum(out * dO)."""
    batch, num_kv_heads, num_rows, head_dim = q.shape
    kv_len = k.shape[1]
    block_rows, block_keys = cfg.block_rows_bwd, cfg.block_keys_bwd
    params = compiler_params()
    extra, extra_specs = _bound_inputs(traced_bounds)

    all_rows = pl.BlockSpec((None, None, num_rows, head_dim), lambda j, b, h: (b, h, 0, 0))
    all_stats = pl.BlockSpec((None, None, num_rows, 1), lambda j, b, h: (b, h, 0, 0))
    key_block = pl.BlockSpec((None, block_keys, None, head_dim), lambda j, b, h: (b, j, h, 0))
    dk, dv = pl.pallas_call(
        functools.partial(_dkdv_kernel, cfg=cfg),
        grid=(kv_len // block_keys, batch, num_kv_heads),
        in_specs=[*extra_specs, all_rows, key_block, key_block, all_rows, all_stats, all_stats],
        out_specs=[key_block, key_block],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=cfg.interpret,
        name="flash_attention_bwd_dkdv",
    )(*extra, q, k, v, do, lse, delta)

    row_block = pl.BlockSpec((None, None, block_rows, head_dim), lambda i, b, h: (b, h, i, 0))
    stats_block = pl.BlockSpec((None, None, block_rows, 1), lambda i, b, h: (b, h, i, 0))
    all_keys = pl.BlockSpec((None, kv_len, None, head_dim), lambda i, b, h: (b, 0, h, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(num_rows // block_rows, batch, num_kv_heads),
        in_specs=[*extra_specs, row_block, all_keys, all_keys, row_block, stats_block, stats_block],
        out_specs=row_block,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=cfg.interpret,
        name="flash_attention_bwd_dq",
    )(*extra, q, k, v, do, lse, delta)
    return dq, dk, dv
