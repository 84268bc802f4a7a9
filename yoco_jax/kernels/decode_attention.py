"""`decode_attention`: few queries against a long K/V cache (flash-decoding).

The cache axis is cut into `num_splits` contiguous splits and every (split, batch, kv head) is its
own program, so a 1M-token cache is read by hundreds of programs in parallel instead of one walking
1M keys. Each program folds its split into unnormalized partials (acc `[R, D]`, row max, row sum;
float32, base 2) with the online softmax of common.py; a small XLA step merges the splits. Blocks
at or beyond a sequence's length are neither computed nor (TPU: thanks to clamped index maps) read,
so ragged batches cost what their real lengths cost.

Queries use the GQA row layout of common.py: the Tq * G rows of a kv head (padded to 16) share
every K/V block load. Caches stay in the model's `[B, S, Hkv, D]` layout (no copy of the cache).
GPU: Triton kernel (see flash_attention_gpu.py for why Triton). TPU: Mosaic kernel with the lengths
scalar-prefetched; head_dim should be a multiple of 128 on real TPUs (tested in TPU interpret mode).
"""

from __future__ import annotations

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
    matmul,
    online_softmax_step,
    pad_axis,
    resolve_backend,
    resolve_interpret,
    unfold_queries,
    visible,
)

DEFAULT_BLOCK_KEYS = {"gpu": 128, "tpu": 512}
# Enough programs to fill every SM of an H100/H200 a few times over (132 SMs).
TARGET_PROGRAMS = 512


def _split_step(carry, q, k, v, key0, start, length, q_len, masking, sm_scale):
    """Fold cache keys `[start, start + BN)` into carry, counting only positions in
    `[key0, length)` that the rows may see (start < key0 only for a block moved back to fit)."""
    block_keys = k.shape[0]
    shape = (q.shape[0], block_keys)
    rows = lax.broadcasted_iota(jnp.int32, shape, 0)
    keys = start + lax.broadcasted_iota(jnp.int32, shape, 1)
    mask = visible(rows, keys, masking, offset=length - q_len) & (keys >= key0) & (keys < length)
    s = jnp.where(mask, matmul(q, k, trans_b=True) * (sm_scale * LOG2E), -jnp.inf)
    # Zero values outside the sequence so stale or uninitialized cache entries (NaN) never leak.
    key_column = start + lax.broadcasted_iota(jnp.int32, (block_keys, 1), 0)
    v = jnp.where((key_column >= key0) & (key_column < length), v, jnp.zeros_like(v))
    return online_softmax_step(*carry, s, v)


def _gpu_kernel(length_ref, q_ref, k_ref, v_ref, acc_ref, m_ref, denom_ref, *, cfg):
    """One (split, batch, kv head): q `[R, D]`, k/v `[S, D]`, acc `[R, D]`, m/denom `[R, 1]`."""
    block_keys, blocks_per_split = cfg["block_keys"], cfg["blocks_per_split"]
    cache_len = k_ref.shape[0]
    length = length_ref[()]
    first = pl.program_id(0) * blocks_per_split
    end = jnp.minimum(first + blocks_per_split, lax.div(length + block_keys - 1, block_keys))
    q = q_ref[...]

    def body(j, carry):
        key0 = j * block_keys
        start = jnp.minimum(key0, cache_len - block_keys)  # keep the last block inside the cache
        keys = pl.ds(start, block_keys)
        return _split_step(
            carry,
            q,
            k_ref[keys, :],
            v_ref[keys, :],
            key0,
            start,
            length,
            cfg["q_len"],
            cfg["masking"],
            cfg["sm_scale"],
        )

    init = (
        jnp.zeros(acc_ref.shape, jnp.float32),
        jnp.full(m_ref.shape, -jnp.inf, jnp.float32),
        jnp.zeros(denom_ref.shape, jnp.float32),
    )
    acc_ref[...], m_ref[...], denom_ref[...] = lax.fori_loop(first, end, body, init)


def _gpu_partials(rows, k_cache, v_cache, lengths, cfg, num_splits, interpret):
    from jax.experimental.pallas import triton as plgpu

    batch, num_kv_heads, num_rows, head_dim = rows.shape
    cache_len = k_cache.shape[1]
    row_spec = pl.BlockSpec((None, None, num_rows, head_dim), lambda s, b, h: (b, h, 0, 0))
    cache_spec = pl.BlockSpec((None, cache_len, None, head_dim), lambda s, b, h: (b, 0, h, 0))
    part = (batch, num_kv_heads, num_splits, num_rows)
    acc_spec = pl.BlockSpec((None, None, None, num_rows, head_dim), lambda s, b, h: (b, h, s, 0, 0))
    stat_spec = pl.BlockSpec((None, None, None, num_rows, 1), lambda s, b, h: (b, h, s, 0, 0))
    return pl.pallas_call(
        functools.partial(_gpu_kernel, cfg=cfg),
        grid=(num_splits, batch, num_kv_heads),
        in_specs=[pl.BlockSpec((None,), lambda s, b, h: (b,)), row_spec, cache_spec, cache_spec],
        out_specs=[acc_spec, stat_spec, stat_spec],
        out_shape=[
            jax.ShapeDtypeStruct((*part, head_dim), jnp.float32),
            jax.ShapeDtypeStruct((*part, 1), jnp.float32),
            jax.ShapeDtypeStruct((*part, 1), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="decode_attention_split",
    )(lengths, rows, k_cache, v_cache)


def _tpu_kernel(lengths_ref, q_ref, k_ref, v_ref, acc_out, m_out, denom_out, acc, m, denom, *, cfg):
    """One (batch, kv head, split, block) step; k/v `[BN, D]`, scratch as in the GPU kernel."""
    block_keys, blocks_per_split = cfg["block_keys"], cfg["blocks_per_split"]
    b, split, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    length = lengths_ref[b]
    key0 = (split * blocks_per_split + t) * block_keys

    @pl.when(t == 0)
    def _init():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)
        m[...] = jnp.full(m.shape, -jnp.inf, jnp.float32)
        denom[...] = jnp.zeros(denom.shape, jnp.float32)

    @pl.when(key0 < length)
    def _step():
        carry = (acc[...], m[...], denom[...])
        acc[...], m[...], denom[...] = _split_step(
            carry,
            q_ref[...],
            k_ref[...],
            v_ref[...],
            key0,
            key0,
            length,
            cfg["q_len"],
            cfg["masking"],
            cfg["sm_scale"],
        )

    @pl.when(t == blocks_per_split - 1)
    def _finish():
        acc_out[...], m_out[...], denom_out[...] = acc[...], m[...], denom[...]


def _tpu_partials(rows, k_cache, v_cache, lengths, cfg, num_splits, interpret):
    from jax.experimental.pallas import tpu as pltpu

    batch, num_kv_heads, num_rows, head_dim = rows.shape
    block_keys, blocks_per_split = cfg["block_keys"], cfg["blocks_per_split"]
    # [B, S, Hkv, D] -> [B, S, Hkv * D] (free): a kv head is a (BN, D) tile of a 3-D array.
    k_cache = k_cache.reshape(batch, k_cache.shape[1], num_kv_heads * head_dim)
    v_cache = v_cache.reshape(k_cache.shape)

    def cache_index(b, h, split, t, lengths_ref):
        # Past the sequence's end, repeat its last block: Pallas skips the copy of a repeated block.
        last_block = jnp.maximum(lax.div(lengths_ref[b] + block_keys - 1, block_keys) - 1, 0)
        return b, jnp.minimum(split * blocks_per_split + t, last_block), h

    part = (batch, num_kv_heads, num_splits, num_rows)
    acc_spec = pl.BlockSpec(
        (None, None, None, num_rows, head_dim), lambda b, h, s, t, _: (b, h, s, 0, 0)
    )
    stat_spec = pl.BlockSpec((None, None, None, num_rows, 1), lambda b, h, s, t, _: (b, h, s, 0, 0))
    cache_spec = pl.BlockSpec((None, block_keys, head_dim), cache_index)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(batch, num_kv_heads, num_splits, blocks_per_split),
        in_specs=[
            pl.BlockSpec((None, None, num_rows, head_dim), lambda b, h, s, t, _: (b, h, 0, 0)),
            cache_spec,
            cache_spec,
        ],
        out_specs=[acc_spec, stat_spec, stat_spec],
        scratch_shapes=[
            pltpu.VMEM((num_rows, head_dim), jnp.float32),
            pltpu.VMEM((num_rows, 1), jnp.float32),
            pltpu.VMEM((num_rows, 1), jnp.float32),
        ],
    )
    return pl.pallas_call(
        functools.partial(_tpu_kernel, cfg=cfg),
        grid_spec=grid_spec,
        out_shape=[
            jax.ShapeDtypeStruct((*part, head_dim), jnp.float32),
            jax.ShapeDtypeStruct((*part, 1), jnp.float32),
            jax.ShapeDtypeStruct((*part, 1), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="decode_attention_split_tpu",
    )(lengths, rows, k_cache, v_cache)


def split_plan(num_programs, cache_len, block_keys, num_splits=None):
    """(block_keys, blocks_per_split, num_splits) for a cache of `cache_len` entries read by
    `num_programs` (batch x kv heads) independent sequences: enough splits that all programs
    together reach TARGET_PROGRAMS, none empty, blocks no longer than the cache."""
    block_keys = min(block_keys, 1 << (cache_len.bit_length() - 1))
    num_blocks = -(-cache_len // block_keys)
    if num_splits is None:
        num_splits = -(-TARGET_PROGRAMS // num_programs)
    blocks_per_split = -(-num_blocks // max(1, min(num_splits, num_blocks)))
    return block_keys, blocks_per_split, -(-num_blocks // blocks_per_split)


def merge_partials(acc, m, denom):
    """Combine per-split partials acc `[..., splits, R, D]`, m/denom `[..., splits, R, 1]` (base 2)
    into normalized rows `[..., R, D]` (0 for rows that saw no key)."""
    m_all = jnp.max(m, axis=-3, keepdims=True)
    weight = jnp.exp2(m - jnp.where(m_all == -jnp.inf, 0.0, m_all))
    denom = jnp.sum(weight * denom, axis=-3)
    acc = jnp.sum(weight * acc, axis=-3)
    return jnp.where(denom > 0.0, acc / jnp.where(denom > 0.0, denom, 1.0), 0.0)


def decode_attention(
    q,
    k_cache,
    v_cache,
    lengths,
    *,
    sm_scale=None,
    interpret=None,
    backend=None,
    block_keys=None,
    num_splits=None,
):
    """Attention of a few new queries per sequence against its K/V cache.

    q `[B, Tq, Hq, D]` (small Tq), caches `[B, S, Hkv, D]`, lengths `[B]` int32: sequence b has
    lengths[b] valid cache entries (clipped to [0, S]) and its queries are its last Tq positions
    (causal among themselves). Returns `[B, Tq, Hq, D]` in q's dtype; a query with no valid key
    gets 0. backend / interpret as in `flash_attention`; block_keys (cache tile, power of two >= 16)
    and num_splits (programs per (batch, kv head)) default to values that fill a GPU at 128K-1M.
    """
    batch, q_len, num_heads, cache_len, num_kv_heads, head_dim = check_qkv(
        q, k_cache, v_cache, what="decode_attention"
    )
    if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"decode_attention: lengths must be an int array of shape ({batch},); got "
            f"{lengths.shape} {lengths.dtype}."
        )
    if cache_len < 16:
        raise ValueError(f"decode_attention: the cache needs >= 16 entries; got S={cache_len}.")
    backend = resolve_backend(backend)
    if backend == "gpu" and (head_dim < 16 or head_dim & (head_dim - 1)):
        raise ValueError(
            f"decode_attention: the GPU kernel needs a power-of-two head_dim >= 16; got {head_dim}."
        )
    block_keys, blocks_per_split, num_splits = split_plan(
        batch * num_kv_heads, cache_len, block_keys or DEFAULT_BLOCK_KEYS[backend], num_splits
    )
    group = num_heads // num_kv_heads
    cfg = {
        "block_keys": block_keys,
        "blocks_per_split": blocks_per_split,
        "q_len": q_len,
        "masking": Masking(group=group, offset=0, kv_len=cache_len, causal=True, window=None),
        "sm_scale": default_scale(sm_scale, head_dim),
    }
    rows = fold_queries(q, num_kv_heads)
    rows = pad_axis(rows, 2, fit_block(1 << 30, rows.shape[2]))
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, cache_len)
    partials = _tpu_partials if backend == "tpu" else _gpu_partials
    acc, m, denom = partials(
        rows, k_cache, v_cache, lengths, cfg, num_splits, resolve_interpret(interpret, backend)
    )
    return unfold_queries(merge_partials(acc, m, denom), q_len, num_heads).astype(q.dtype)
