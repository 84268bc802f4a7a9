"""The one attention address: every mixer calls `attend(q, k, v, visibility, runtime)`.

q `[B, Tq, Hq, Dh]`, k and v `[B, Tk, Hkv, Dh]`; query head h reads kv head h // (Hq // Hkv).
A `Visibility` says which keys each query sees, always causal by position and optionally
within a window (keys in (p - window, p]):
- `causal(positions, window)`: q, k, v are one sequence (training, a first prefill);
- `cached(lengths, window)`: k, v a cache; q the last Tq positions of each row's first
  `lengths[b]` entries (decode, a prefill chunk);
- `gathered(positions, kv_positions)`: q the local slice of a sequence split over the context
  axis, k and v the global K/V from `context_parallel.gather_kv` (YOCO's cross-decoder).
Packed documents add one more field, `segments` (the queries' and keys' segment ids,
ops/documents.py): every path also masks keys of another segment out.
An int8 cache (`kv_cache_dtype=int8`, model/cache.py QuantizedKV) comes with its float32
scales, `k_scale` and `v_scale` `[B, Tk, Hkv]`, beside k and v: every cached path dequantizes
where it reads (the kernels and the blocked softmax one key block at a time).

`attend` owns what used to be decided in each mixer: whether the call is split over the mesh's
context axis (`sharding.tracing()`), which implementation runs (`attention_choice.pick`, the one
resolver: "xla" here, "pallas" yoco_jax.kernels, "cudnn"), and the kernel call (per device).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
from jaxtyping import Array, Float, Int, Shaped

from yoco_jax import kernels, sharding
from yoco_jax.config import Runtime
from yoco_jax.kernels.int8 import dequantize
from yoco_jax.ops import attention_choice, context_parallel
from yoco_jax.ops.chunked_attention import chunked_attention
from yoco_jax.ops.masked_attention import masked_attention, position_mask
from yoco_jax.ops.per_device import per_device

MAX_DECODE_QUERIES = 16


@dataclasses.dataclass(frozen=True)
class Visibility:
    """Which keys each query sees (build one with `causal`, `cached` or `gathered`)."""

    kind: str  # "causal", "cached" or "gathered"
    window: int | None = None
    positions: Int[Array, "B Tq"] | None = None  # causal, gathered: the queries' positions
    lengths: Int[Array, " B"] | None = None  # cached: entries of each row, new ones included
    kv_positions: Int[Array, "*n B Tk"] | None = None  # gathered: the keys' positions
    # causal, gathered: packed documents, (queries' [B, Tq], keys' [*n, B, Tk]) segment ids
    segments: tuple[Int[Array, "B Tq"], Int[Array, "*n B Tk"]] | None = None


def causal(
    positions: Int[Array, "B T"] | None = None,
    window: int | None = None,
    segment_ids: Int[Array, "B T"] | None = None,
) -> Visibility:
    """q, k, v one sequence; `positions` are needed where it is split over the context axis;
    `segment_ids`: packed documents, each attending within itself."""
    segments = None if segment_ids is None else (segment_ids, segment_ids)
    return Visibility("causal", window, positions=positions, segments=segments)


def cached(lengths: Int[Array, " B"], window: int | None = None) -> Visibility:
    return Visibility("cached", window, lengths=lengths)


def gathered(
    positions: Int[Array, "B T"],
    kv_positions: Int[Array, "*n B S"],
    segments: tuple[Int[Array, "B T"], Int[Array, "*n B S"]] | None = None,
) -> Visibility:
    return Visibility("gathered", positions=positions, kv_positions=kv_positions, segments=segments)


def attend(
    q: Float[Array, "B Tq Hq Dh"],
    k: Shaped[Array, "*n B Tk Hkv Dh"],
    v: Shaped[Array, "*n B Tk Hkv Dh"],
    visibility: Visibility,
    runtime: Runtime,
    *,
    k_scale: Float[Array, "B Tk Hkv"] | None = None,
    v_scale: Float[Array, "B Tk Hkv"] | None = None,
) -> Float[Array, "B Tq Hq Dh"]:
    """Attention of q to k, v as `visibility` allows, as `runtime` (attention_impl, the kernel
    options) asks; split over the context axis of the mesh being traced under, if any.
    `k_scale`, `v_scale`: k, v are an int8 cache (a `cached` visibility only)."""
    vis = visibility
    if (k_scale is not None or v_scale is not None) and vis.kind != "cached":
        raise ValueError(
            f"k_scale, v_scale belong to an int8 cache: give them with cached(), not {vis.kind}()"
        )
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    options = {"impl": runtime.attention_impl, **runtime.kernel_options}
    if vis.segments is not None:
        # Packed documents run the XLA forms, which mask by segment; the Pallas and cuDNN
        # kernels mask by index only (segment ids in the kernels: not written yet).
        options["impl"] = "xla"
    split = sharding.tracing().context_size > 1
    if vis.kind == "gathered":
        return context_parallel.cross_attention(
            q, vis.positions, k, v, vis.kv_positions, vis.segments, **options
        )
    if vis.kind == "causal" and split and vis.window is not None:
        seg = None if vis.segments is None else vis.segments[0]
        return context_parallel.window_attention(q, k, v, vis.positions, vis.window, seg, **options)
    if vis.kind == "causal":  # whole, or (no window: the baseline) left to XLA's partitioner
        return causal_attention(q, k, v, window=vis.window, segments=vis.segments, **options)
    if split and vis.window is None:  # YOCO's global cache, split along its length (yoco.py)
        return context_parallel.cache_attention(q, k, v, vis.lengths, **scales)
    # A window's ring (a few thousand entries) stays whole on every device.
    return cache_attention(q, k, v, vis.lengths, window=vis.window, **scales, **options)


def causal_attention(
    q: Float[Array, "B T Hq Dh"],
    k: Float[Array, "B T Hkv Dh"],
    v: Float[Array, "B T Hkv Dh"],
    *,
    window: int | None = None,
    segments: tuple[Int[Array, "B T"], Int[Array, "B T"]] | None = None,
    impl: str = "xla",
    backend: str | None = None,
    interpret: bool | None = None,
) -> Float[Array, "B T Hq Dh"]:
    """Causal self/cross attention over a whole sequence (training, full forward), unsplit.
    `segments`: packed documents (XLA only); `backend`, `interpret`: the Pallas kernels'
    (ModelConfig.kernel_options)."""
    impl = attention_choice.pick(impl, "causal", q, k.shape[1], window)
    if impl == "cudnn":
        return per_device(attention_choice.cudnn_causal_attention, q, k, v)
    if impl == "pallas" and attention_choice.pallas_fits(q.shape[-1], k.shape[1]):
        kernel = lambda q, k, v: kernels.flash_attention(
            q, k, v, causal=True, window=window, backend=backend, interpret=interpret
        )
        return per_device(kernel, q, k, v)
    b, t = q.shape[:2]
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    return masked_attention(q, k, v, position_mask(pos, pos, window, segments))


def cache_attention(
    q: Float[Array, "B Tq Hq Dh"],
    k_cache: Shaped[Array, "B S Hkv Dh"],
    v_cache: Shaped[Array, "B S Hkv Dh"],
    lengths: Int[Array, " B"],
    *,
    window: int | None = None,
    impl: str = "xla",
    backend: str | None = None,
    interpret: bool | None = None,
    k_scale: Float[Array, "B S Hkv"] | None = None,
    v_scale: Float[Array, "B S Hkv"] | None = None,
) -> Float[Array, "B Tq Hq Dh"]:
    """The last Tq positions of each sequence against its first `lengths` entries, unsplit
    (`window`: as in `causal_attention`; `backend`, `interpret`: the Pallas kernels').

    Up to `MAX_DECODE_QUERIES` queries (decode) run the split-K Pallas decode kernel (no window)
    or the masked XLA path; a prefill chunk runs the Pallas chunk kernel or the blocked XLA
    path of ops/chunked_attention.py (memory independent of the cache length).
    All compute in the cache's dtype: q is cast to it (a bfloat16 cache read by a float32 model,
    or the reverse, never copies the cache) and the output back to q's dtype. An int8 cache
    (`k_scale`, `v_scale`) is dequantized to q's dtype where read: inside the kernels and the
    blocked path one key block at a time; whole by the masked decode path, whose scores are
    already as long as the cache.
    """
    int8 = k_scale is not None
    out_dtype, q = q.dtype, q if int8 else q.astype(k_cache.dtype)
    scales = {"k_scale": k_scale, "v_scale": v_scale} if int8 else {}
    decode = q.shape[1] <= MAX_DECODE_QUERIES
    impl = attention_choice.pick(impl, "decode" if decode else "chunk", q, k_cache.shape[1], window)
    if impl == "pallas" and attention_choice.pallas_fits(q.shape[-1], k_cache.shape[1]):
        options = {"backend": backend, "interpret": interpret}
        if decode and window is None:
            kernel = functools.partial(kernels.decode_attention, **options)
        else:
            kernel = functools.partial(kernels.chunk_attention, window=window, **options)
        # The scales go positionally: per_device splits them [B, S, Hkv] like k's heads.
        call = lambda q, k, v, n, *s: kernel(q, k, v, n, **dict(zip(scales, s)))
        return per_device(call, q, k_cache, v_cache, lengths, *scales.values()).astype(out_dtype)
    if not decode:
        out = chunked_attention(q, k_cache, v_cache, lengths, window=window, **scales)
        return out.astype(out_dtype)
    if int8:
        k_cache, v_cache = (
            dequantize(k_cache, k_scale, q.dtype),
            dequantize(v_cache, v_scale, q.dtype),
        )
    b, tq = q.shape[:2]
    q_pos = lengths[:, None] - tq + jnp.arange(tq)
    kv_pos = jnp.broadcast_to(jnp.arange(k_cache.shape[1]), (b, k_cache.shape[1]))
    kv_pos = jnp.where(kv_pos < lengths[:, None], kv_pos, -1)
    out = masked_attention(q, k_cache, v_cache, position_mask(q_pos, kv_pos, window))
    return out.astype(out_dtype)
