"""Flash attention forward and backward for TPUs (Pallas Mosaic TPU, `pltpu`).

Same math and GQA row layout as flash_attention_gpu.py, written for the TPU programming model: the
grid is (batch, kv head, outer block, inner block); the inner axis is sequential ("arbitrary") and
accumulates into VMEM scratch. BlockSpecs move one `[rows, D]` / `[keys, D]` tile per step; steps
outside the causal / window band skip compute, and their index maps repeat the last useful block so
Pallas issues no DMA for them. K/V are transposed to `[B, Hkv, Tk, D]` so every tile is a dense
`(multiple of 8, D)` slab (head_dim should be a multiple of 128 on real TPUs, like the YOCO models).

With a traced query offset (flash_attention_bounds.py) the two int32 scalars arrive by scalar
prefetch: the index maps read them too, so blocks outside the band are neither computed nor copied.

Tested on CPU with TPU semantics (`pltpu.InterpretParams`); not yet run on TPU hardware.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from yoco_jax.kernels import flash_attention_bounds as bounds
from yoco_jax.kernels.common import LOG2E, matmul, online_softmax_step

_SEMANTICS = pltpu.CompilerParams(
    dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
)


def _clamp(index, first, end):
    """Keep a block index inside [first, end) so skipped steps re-use an already loaded block."""
    return jnp.minimum(jnp.maximum(index, first), jnp.maximum(end - 1, 0))


def _band(cfg, bounds_ref=None):
    """The band of `cfg`; with `cfg.traced`, its scalars from the prefetched `[2]` ref."""
    if bounds_ref is None:
        return bounds.band(cfg)
    return bounds.band(cfg, bounds_ref[0], bounds_ref[1])


def _split(refs, cfg):
    """(band, the other refs): with `cfg.traced` the first ref holds the prefetched scalars."""
    return (_band(cfg, refs[0]), refs[1:]) if cfg.traced else (_band(cfg), refs)


def _call(kernel, traced_bounds, grid, in_specs, out_specs, scratch, out_shape, name, cfg):
    """pallas_call with the traced scalars (if any) prefetched: they lead the index maps' and
    the kernel's arguments."""
    prefetch = () if traced_bounds is None else (traced_bounds,)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(prefetch),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        scratch_shapes=scratch,
    )
    return functools.partial(
        pl.pallas_call(
            kernel,
            grid_spec=grid_spec,
            out_shape=out_shape,
            compiler_params=_SEMANTICS,
            interpret=cfg.interpret,
            name=name,
        ),
        *prefetch,
    )


def _forward_kernel(*refs, cfg, nkb):
    """One (row block i, key block j) step; q/o `[BM, D]`, k/v `[BN, D]`, lse/m/denom `[BM, 1]`."""
    bd, (q_ref, k_ref, v_ref, o_ref, lse_ref, acc_ref, m_ref, denom_ref) = _split(refs, cfg)
    block_rows, block_keys = cfg.block_rows, cfg.block_keys
    i, j = pl.program_id(2), pl.program_id(3)
    first, end = bounds.key_blocks(bd, i * block_rows, block_rows, block_keys, nkb)

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        denom_ref[...] = jnp.zeros(denom_ref.shape, jnp.float32)

    @pl.when((j >= first) & (j < end))
    def _step():
        s = matmul(q_ref[...], k_ref[...], trans_b=True) * (cfg.sm_scale * LOG2E)
        mask = bounds.tile_mask(bd, i * block_rows, j * block_keys, block_rows, block_keys)
        s = jnp.where(mask, s, -jnp.inf)
        acc, m, denom = online_softmax_step(acc_ref[...], m_ref[...], denom_ref[...], s, v_ref[...])
        acc_ref[...], m_ref[...], denom_ref[...] = acc, m, denom

    @pl.when(j == nkb - 1)
    def _finish():
        denom = denom_ref[...]
        seen = denom > 0.0
        out = jnp.where(seen, acc_ref[...] / jnp.where(seen, denom, 1.0), 0.0)
        o_ref[...] = out.astype(o_ref.dtype)
        lse_ref[...] = m_ref[...] + jnp.log2(denom)


def forward(q, k, v, cfg, traced_bounds=None):
    """q `[B, Hkv, R, D]`, k/v `[B, Tk, Hkv, D]` -> out `[B, Hkv, R, D]`, lse `[B, Hkv, R, 1]`.

    traced_bounds: int32 `[2]` (q_offset, kv_start) when `cfg.traced`, else None."""
    batch, num_kv_heads, num_rows, head_dim = q.shape
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    block_rows, block_keys = cfg.block_rows, cfg.block_keys
    nrb, nkb = num_rows // block_rows, k.shape[2] // block_keys

    def kv_index(b, h, i, j, *prefetch):
        bd = _band(cfg, *prefetch)
        first, end = bounds.key_blocks(bd, i * block_rows, block_rows, block_keys, nkb)
        return b, h, _clamp(j, first, end), 0

    row_spec = pl.BlockSpec((None, None, block_rows, head_dim), lambda b, h, i, j, *_: (b, h, i, 0))
    lse_spec = pl.BlockSpec((None, None, block_rows, 1), lambda b, h, i, j, *_: (b, h, i, 0))
    kv_spec = pl.BlockSpec((None, None, block_keys, head_dim), kv_index)
    scratch = [
        pltpu.VMEM((block_rows, head_dim), jnp.float32),
        pltpu.VMEM((block_rows, 1), jnp.float32),
        pltpu.VMEM((block_rows, 1), jnp.float32),
    ]
    out_shape = [
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        jax.ShapeDtypeStruct((batch, num_kv_heads, num_rows, 1), jnp.float32),
    ]
    call = _call(
        functools.partial(_forward_kernel, cfg=cfg, nkb=nkb),
        traced_bounds,
        (batch, num_kv_heads, nrb, nkb),
        [row_spec, kv_spec, kv_spec],
        [row_spec, lse_spec],
        scratch,
        out_shape,
        "flash_attention_fwd_tpu",
        cfg,
    )
    return call(q, k, v)


def _tile_gradients(q, k, v, do, lse, delta, i, j, cfg, bd):
    """Probabilities p and score gradients ds of tile (row block i, key block j), `[BM, BN]`."""
    block_rows, block_keys = cfg.block_rows_bwd, cfg.block_keys_bwd
    s = matmul(q, k, trans_b=True) * (cfg.sm_scale * LOG2E)
    mask = bounds.tile_mask(bd, i * block_rows, j * block_keys, block_rows, block_keys)
    p = jnp.where(mask, jnp.exp2(s - lse), 0.0)
    return p, p * (matmul(do, v, trans_b=True) - delta)


def _dkdv_kernel(*refs, cfg, nrb):
    """One (key block j, row block i) step accumulating dK, dV `[BN, D]` of key block j."""
    bd, refs = _split(refs, cfg)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_acc, dv_acc = refs
    j, i = pl.program_id(2), pl.program_id(3)
    first, end = bounds.row_blocks(
        bd, j * cfg.block_keys_bwd, cfg.block_keys_bwd, cfg.block_rows_bwd, nrb
    )

    @pl.when(i == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    @pl.when((i >= first) & (i < end))
    def _step():
        q, do = q_ref[...], do_ref[...]
        p, ds = _tile_gradients(
            q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...], i, j, cfg, bd
        )
        dv_acc[...] += matmul(p.astype(do.dtype), do, trans_a=True)
        dk_acc[...] += matmul(ds.astype(q.dtype), q, trans_a=True)

    @pl.when(i == nrb - 1)
    def _finish():
        dk_ref[...] = (dk_acc[...] * cfg.sm_scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg, nkb):
    """One (row block i, key block j) step accumulating dQ `[BM, D]` of row block i."""
    bd, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_acc) = _split(refs, cfg)
    i, j = pl.program_id(2), pl.program_id(3)
    first, end = bounds.key_blocks(
        bd, i * cfg.block_rows_bwd, cfg.block_rows_bwd, cfg.block_keys_bwd, nkb
    )

    @pl.when(j == 0)
    def _init():
        dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

    @pl.when((j >= first) & (j < end))
    def _step():
        k = k_ref[...]
        _, ds = _tile_gradients(
            q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], delta_ref[...], i, j, cfg, bd
        )
        dq_acc[...] += matmul(ds.astype(k.dtype), k)

    @pl.when(j == nkb - 1)
    def _finish():
        dq_ref[...] = (dq_acc[...] * cfg.sm_scale).astype(dq_ref.dtype)


def backward(q, k, v, lse, delta, do, cfg, traced_bounds=None):
    """Gradients of `forward` given dO (`[B, Hkv, R, D]`) and delta = rowsum(out * dO)."""
    batch, num_kv_heads, num_rows, head_dim = q.shape
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    block_rows, block_keys = cfg.block_rows_bwd, cfg.block_keys_bwd
    nrb, nkb = num_rows // block_rows, k.shape[2] // block_keys

    # dK/dV: grid (b, h, key block j, row block i), rows inner.
    def rows_of_key_block(b, h, j, i, *prefetch):
        bd = _band(cfg, *prefetch)
        first, end = bounds.row_blocks(bd, j * block_keys, block_keys, block_rows, nrb)
        return b, h, _clamp(i, first, end), 0

    rows = pl.BlockSpec((None, None, block_rows, head_dim), rows_of_key_block)
    stats = pl.BlockSpec((None, None, block_rows, 1), rows_of_key_block)
    keys = pl.BlockSpec((None, None, block_keys, head_dim), lambda b, h, j, i, *_: (b, h, j, 0))
    dk, dv = _call(
        functools.partial(_dkdv_kernel, cfg=cfg, nrb=nrb),
        traced_bounds,
        (batch, num_kv_heads, nkb, nrb),
        [rows, keys, keys, rows, stats, stats],
        [keys, keys],
        [pltpu.VMEM((block_keys, head_dim), jnp.float32)] * 2,
        [jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2,
        "flash_attention_bwd_dkdv_tpu",
        cfg,
    )(q, k, v, do, lse, delta)

    # dQ: grid (b, h, row block i, key block j), keys inner.
    def keys_of_row_block(b, h, i, j, *prefetch):
        bd = _band(cfg, *prefetch)
        first, end = bounds.key_blocks(bd, i * block_rows, block_rows, block_keys, nkb)
        return b, h, _clamp(j, first, end), 0

    rows = pl.BlockSpec((None, None, block_rows, head_dim), lambda b, h, i, j, *_: (b, h, i, 0))
    stats = pl.BlockSpec((None, None, block_rows, 1), lambda b, h, i, j, *_: (b, h, i, 0))
    keys = pl.BlockSpec((None, None, block_keys, head_dim), keys_of_row_block)
    dq = _call(
        functools.partial(_dq_kernel, cfg=cfg, nkb=nkb),
        traced_bounds,
        (batch, num_kv_heads, nrb, nkb),
        [rows, keys, keys, rows, stats, stats],
        rows,
        [pltpu.VMEM((block_rows, head_dim), jnp.float32)],
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        "flash_attention_bwd_dq_tpu",
        cfg,
    )(q, k, v, do, lse, delta)
    return dq, dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)
