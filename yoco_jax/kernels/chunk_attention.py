"""`chunk_attention`: a chunk of queries (chunked prefill) against a long K/V cache.

Which kernel and why: the flash forward of flash_attention_gpu.py / _tpu.py with a per-row query
offset, not the split-K decode kernel grown to larger Tq. A prefill chunk has thousands of
queries, so its row blocks (Tq * G / block rows per kv head) already give every SM or TPU core
work; split-K would add float32 partials for every (split, row) and a merge pass, worth it only
for the few rows of decode (decode_attention.py keeps that). What the flash forward lacked is
the offset: row b's queries are the last Tq of its `lengths[b]` entries, so its offset
`lengths[b] - Tq` is read from a per-row ref (GPU: a (1,) block; TPU: scalar prefetch, which also
lets the index maps skip the DMA of every block outside the visible band). The cache stays in the
model's `[B, S, Hkv, D]` layout (no copy, no padding of the cache); blocks past a row's length
are neither computed nor (TPU) read. Forward only (prefill needs no gradient).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from yoco_jax.kernels.common import (
    LOG2E,
    Masking,
    check_qkv,
    default_scale,
    fit_block,
    fold_queries,
    key_block_range,
    matmul,
    online_softmax_step,
    pad_axis,
    resolve_backend,
    resolve_interpret,
    unfold_queries,
    unmasked_key_blocks,
    visible,
)

DEFAULT_BLOCKS = {"gpu": (128, 64), "tpu": (128, 128)}  # (rows, keys), as flash_attention


def _cdiv(x, d):
    return lax.div(x + (d - 1), d)


def _row_masking(cfg, length):
    """The static masking with this row's offset (queries are the last q_len of `length`)."""
    return dataclasses.replace(cfg["masking"], offset=length - cfg["q_len"])


def _tile(carry, q, k, v, row0, key0, start, length, masking, cfg, masked):
    """Fold cache keys `[start, start + BN)` into carry; with `masked`, only the keys in
    `[key0, length)` the rows may see (start < key0 only for a last block moved back)."""
    s = matmul(q, k, trans_b=True) * (cfg["sm_scale"] * LOG2E)
    if masked:
        shape = (q.shape[0], k.shape[0])
        rows = row0 + lax.broadcasted_iota(jnp.int32, shape, 0)
        keys = start + lax.broadcasted_iota(jnp.int32, shape, 1)
        inside = (keys >= key0) & (keys < length)
        s = jnp.where(visible(rows, keys, masking) & inside, s, -jnp.inf)
        # Zero values outside the sequence so stale or uninitialized entries (NaN) never leak.
        column = start + lax.broadcasted_iota(jnp.int32, (k.shape[0], 1), 0)
        v = jnp.where((column >= key0) & (column < length), v, jnp.zeros_like(v))
    return online_softmax_step(*carry, s, v)


def _finish(acc, denom, o_ref):
    seen = denom > 0.0
    o_ref[...] = jnp.where(seen, acc / jnp.where(seen, denom, 1.0), 0.0).astype(o_ref.dtype)


def _gpu_kernel(length_ref, q_ref, k_ref, v_ref, o_ref, *, cfg):
    """One (row block, batch, kv head): q/o `[BM, D]`, k/v `[S, D]` (the whole cache row)."""
    block_rows, block_keys = cfg["block_rows"], cfg["block_keys"]
    cache_len = k_ref.shape[0]
    length = length_ref[()]
    masking = _row_masking(cfg, length)
    row0 = pl.program_id(0) * block_rows
    q = q_ref[...]
    first, end = key_block_range(row0, block_rows, block_keys, _cdiv(length, block_keys), masking)
    # Blocks wholly inside the band and below `length` skip the mask.
    full_first, full_end = unmasked_key_blocks(
        row0, block_rows, block_keys, first, jnp.clip(length // block_keys, first, end), masking
    )

    def body(masked):
        def step(j, carry):
            key0 = j * block_keys
            start = jnp.minimum(key0, cache_len - block_keys)
            keys = pl.ds(start, block_keys)
            return _tile(
                carry,
                q,
                k_ref[keys, :],
                v_ref[keys, :],
                row0,
                key0,
                start,
                length,
                masking,
                cfg,
                masked,
            )

        return step

    carry = (
        jnp.zeros(o_ref.shape, jnp.float32),
        jnp.full((block_rows, 1), -jnp.inf, jnp.float32),
        jnp.zeros((block_rows, 1), jnp.float32),
    )
    carry = lax.fori_loop(first, full_first, body(True), carry)
    carry = lax.fori_loop(full_first, full_end, body(False), carry)
    acc, _, denom = lax.fori_loop(full_end, end, body(True), carry)
    _finish(acc, denom, o_ref)


def _gpu_call(rows, k, v, lengths, cfg, interpret):
    from jax.experimental.pallas import triton as plgpu

    batch, num_kv_heads, num_rows, head_dim = rows.shape
    block_rows = cfg["block_rows"]
    row_spec = pl.BlockSpec((None, None, block_rows, head_dim), lambda i, b, h: (b, h, i, 0))
    cache_spec = pl.BlockSpec((None, k.shape[1], None, head_dim), lambda i, b, h: (b, 0, h, 0))
    return pl.pallas_call(
        functools.partial(_gpu_kernel, cfg=cfg),
        grid=(num_rows // block_rows, batch, num_kv_heads),
        in_specs=[pl.BlockSpec((None,), lambda i, b, h: (b,)), row_spec, cache_spec, cache_spec],
        out_specs=row_spec,
        out_shape=jax.ShapeDtypeStruct(rows.shape, rows.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="chunk_attention",
    )(lengths, rows, k, v)


def _tpu_kernel(lengths_ref, q_ref, k_ref, v_ref, o_ref, acc, m, denom, *, cfg, nkb):
    """One (batch, kv head, row block i, key block j) step; k/v `[BN, D]`."""
    block_rows, block_keys = cfg["block_rows"], cfg["block_keys"]
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    length = lengths_ref[b]
    masking = _row_masking(cfg, length)
    row0 = i * block_rows
    first, end = key_block_range(row0, block_rows, block_keys, _cdiv(length, block_keys), masking)

    @pl.when(j == 0)
    def _init():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)
        m[...] = jnp.full(m.shape, -jnp.inf, jnp.float32)
        denom[...] = jnp.zeros(denom.shape, jnp.float32)

    @pl.when((j >= first) & (j < end))
    def _step():
        key0 = j * block_keys
        acc[...], m[...], denom[...] = _tile(
            (acc[...], m[...], denom[...]),
            q_ref[...],
            k_ref[...],
            v_ref[...],
            row0,
            key0,
            key0,
            length,
            masking,
            cfg,
            True,
        )

    @pl.when(j == nkb - 1)
    def _done():
        _finish(acc[...], denom[...], o_ref)


def _tpu_call(rows, k, v, lengths, cfg, interpret):
    from jax.experimental.pallas import tpu as pltpu

    batch, num_kv_heads, num_rows, head_dim = rows.shape
    block_rows, block_keys = cfg["block_rows"], cfg["block_keys"]
    nkb = -(-k.shape[1] // block_keys)
    # [B, S, Hkv, D] -> [B, S, Hkv * D] (free): a kv head is a (BN, D) tile of a 3-D array.
    k = k.reshape(batch, k.shape[1], num_kv_heads * head_dim)
    v = v.reshape(k.shape)

    def cache_index(b, h, i, j, lengths_ref):
        # Outside the visible band, repeat a block in it: Pallas skips the copy of a repeat.
        masking = _row_masking(cfg, lengths_ref[b])
        nb = _cdiv(lengths_ref[b], block_keys)
        first, end = key_block_range(i * block_rows, block_rows, block_keys, nb, masking)
        return b, jnp.minimum(jnp.maximum(j, first), jnp.maximum(end - 1, 0)), h

    row_spec = pl.BlockSpec((None, None, block_rows, head_dim), lambda b, h, i, j, _: (b, h, i, 0))
    cache_spec = pl.BlockSpec((None, block_keys, head_dim), cache_index)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(batch, num_kv_heads, num_rows // block_rows, nkb),
        in_specs=[row_spec, cache_spec, cache_spec],
        out_specs=row_spec,
        scratch_shapes=[
            pltpu.VMEM((block_rows, head_dim), jnp.float32),
            pltpu.VMEM((block_rows, 1), jnp.float32),
            pltpu.VMEM((block_rows, 1), jnp.float32),
        ],
    )
    return pl.pallas_call(
        functools.partial(_tpu_kernel, cfg=cfg, nkb=nkb),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(rows.shape, rows.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="chunk_attention_tpu",
    )(lengths, rows, k, v)


def chunk_attention(
    q,
    k_cache,
    v_cache,
    lengths,
    *,
    window=None,
    sm_scale=None,
    interpret=None,
    backend=None,
    block_rows=None,
    block_keys=None,
):
    """Attention of a chunk of queries per sequence against its K/V cache (chunked prefill).

    q `[B, Tq, Hq, D]`, caches `[B, S, Hkv, D]`, lengths `[B]` int32: sequence b has lengths[b]
    valid entries (clipped to [0, S]) and its queries are its last Tq positions: query i sits at
    lengths[b] - Tq + i and sees entries at or before it (and after it - window with a window).
    Returns `[B, Tq, Hq, D]` in q's dtype; a query with no visible entry gets 0. backend /
    interpret as in `flash_attention`; block_rows / block_keys: tiles (powers of two >= 16).
    """
    batch, q_len, num_heads, cache_len, num_kv_heads, head_dim = check_qkv(
        q, k_cache, v_cache, what="chunk_attention"
    )
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"chunk_attention: lengths must be an int array of shape ({batch},); got "
            f"{lengths.shape} {lengths.dtype}."
        )
    if cache_len < 16 or head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(
            f"chunk_attention: needs a cache of >= 16 entries and a power-of-two head_dim >= 16; "
            f"got S={cache_len}, D={head_dim} (use ops.chunked_attention for other shapes)."
        )
    if window is not None and int(window) < 1:
        raise ValueError(f"chunk_attention: window must be >= 1, got {window}.")
    backend = resolve_backend(backend)
    rows_default, keys_default = DEFAULT_BLOCKS[backend]
    group = num_heads // num_kv_heads
    num_rows = q_len * group
    block_rows = fit_block(block_rows or rows_default, num_rows)
    # A power of two no longer than the cache: every key block lies inside it.
    block_keys = min(block_keys or keys_default, 1 << (cache_len.bit_length() - 1))
    cfg = {
        "block_rows": block_rows,
        "block_keys": block_keys,
        "q_len": q_len,
        "masking": Masking(group, 0, cache_len, True, None if window is None else int(window)),
        "sm_scale": default_scale(sm_scale, head_dim),
    }
    rows = pad_axis(fold_queries(q, num_kv_heads), 2, -(-num_rows // block_rows) * block_rows)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, cache_len)
    call = _tpu_call if backend == "tpu" else _gpu_call
    out = call(rows, k_cache, v_cache, lengths, cfg, resolve_interpret(interpret, backend))
    return unfold_queries(out, q_len, num_heads)
