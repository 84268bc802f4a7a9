"""Context parallelism: the sequence split over the `context` mesh axis, one slice per device.

Each op is a `shard_map` that is manual over `context` only; the other mesh axes (data, fsdp,
tensor) stay automatic, so batch and head sharding pass through unchanged. Slice i holds global
positions [i * T/n, (i + 1) * T/n). Shapes below are global; `n` is the axis size.

- `retention` (ops/context_retention.py): each slice from a zero state, then the states scanned.
- `window_attention`: each slice receives the previous slices' last `window - 1` keys and
  values (a halo by `ppermute`), so windows that cross a slice boundary are exact.
- `gather_kv` + `cross_attention`: the cross-decoder's ONE global K/V is all-gathered once per
  step and every cross layer attends its local queries to it (causal by global position).
  Attention here is blocked (yoco_jax.ops.blocked_attention): each half of a device's queries
  walks only the key blocks up to its last position, never the [T/n, T] scores. A K/V too
  large to gather stays split instead: ring attention (yoco_jax.ops.ring_attention).
- `balance` / `unbalance`: the cross-decoder's tokens in zig-zag order (device i holds half
  slices i and 2n-1-i), so that every device does the same causal work; see docs/training.md.
- `cache_attention`: decoding against a K/V cache that stays split along its length.

Packed documents: `segments` (the queries' and keys' segment ids, ops/documents.py) travel with
the positions: through the window halo, the gather, the ring and the zig-zag layout.

All of it is differentiable, so the backward passes are exact (all_gather transposes to a
reduce-scatter, in float32 for K/V; ppermute to the reverse ppermute).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int, Shaped

from yoco_jax import sharding
from yoco_jax.kernels.int8 import dequantize
from yoco_jax.ops import collectives
from yoco_jax.ops.blocked_attention import blocked_attention
from yoco_jax.ops.context_kernels import halves_kernel
from yoco_jax.ops.masked_attention import position_mask
from yoco_jax.ops.ring_attention import choose, ring_cross_attention
from yoco_jax.ops.zigzag import contiguous_half, half_block_keys, halves, zigzag_half
from yoco_jax.sharding import CONTEXT_AXIS as AXIS

f32 = jnp.float32
SPLIT = P(None, AXIS)  # [B, T, ...] split along T; other dims left to the automatic axes
WHOLE = P()


def check_length(t: int, n: int | None = None) -> None:
    """Refuses a sequence that does not split into equal slices over the context axis."""
    n = sharding.tracing().context_size if n is None else n
    if t % n:
        raise ValueError(
            f"sequence length {t} does not divide over the context axis of size {n}; "
            f"use a length that is a multiple of {n} (pad the batch) or a smaller mesh.context"
        )


def split_along_length(x: Array) -> Array:
    """Pins x [B, T, ...] to be split along T over the axis (other dims left free)."""
    free = P.UNCONSTRAINED
    return jax.lax.with_sharding_constraint(x, P(free, AXIS, *[free] * (x.ndim - 2)))


def shard(fn, ins, outs, vma=True):  # vma=False around Pallas kernels (context_kernels.py)
    """`fn` in a shard_map manual over the context axis only (the others stay automatic)."""
    fn = jax.shard_map(fn, in_specs=ins, out_specs=outs, axis_names={AXIS}, check_vma=vma)
    return fn if vma else jax.jit(fn)  # unchecked, it runs under jit only (not eagerly)


def _halo(x, hops: int):
    """The previous `hops` slices of x along T, oldest first: [B, hops * T/n, ...] (zeros
    where there is no such slice)."""
    n = jax.lax.axis_size(AXIS)
    parts = []
    for hop in range(hops, 0, -1):
        perm = [(src, src + hop) for src in range(n - hop)]
        parts.append(jax.lax.ppermute(x, AXIS, perm))
    return jnp.concatenate(parts, axis=1)


def window_attention(
    q: Float[Array, "B T H Dh"],
    k: Float[Array, "B T H Dh"],
    v: Float[Array, "B T H Dh"],
    positions: Int[Array, "B T"],
    window: int,
    segment_ids: Int[Array, "B T"] | None = None,
    **kernel,
) -> Float[Array, "B T H Dh"]:
    """Sliding-window attention (keys in (p - window, p]) over slices; kernel: halves_kernel's;
    `segment_ids`: packed documents (keys of the query's own segment only)."""
    t, n = q.shape[1], sharding.tracing().context_size
    check_length(t, n)
    local_len = t // n
    hops = min(n - 1, -(-(window - 1) // local_len))  # slices a window can reach back into
    attend = halves_kernel(q, t, window, **kernel) or _by_halves

    def local(q, k, v, pos, seg):
        documents = {} if seg is None else {"segments": (seg, seg)}
        if hops == 0:
            return attend(q, pos, k, v, pos, window, **documents)
        keep = min(window - 1, hops * local_len)  # halo entries that can be in a window
        halo = lambda x: _halo(x, hops)[:, -keep:]
        # Positions travel as pos + 1 so that a missing slice (zeros) arrives as -1: empty.
        kv_pos = jnp.concatenate([halo(pos + 1) - 1, pos], axis=1)
        keys = jnp.concatenate([halo(k), k], axis=1)
        values = jnp.concatenate([halo(v), v], axis=1)
        if seg is not None:
            documents = {"segments": (seg, jnp.concatenate([halo(seg), seg], axis=1))}
        return attend(q, pos, keys, values, kv_pos, window, **documents)

    specs = (SPLIT,) * 5
    return shard(local, specs, SPLIT, attend is _by_halves)(q, k, v, positions, segment_ids)


def _by_halves(q, pos, k, v, kv_pos, window=None, segments=None):
    """Blocked attention of each half of the local queries on its own, so that each half skips
    the key blocks past its own last position (the two zig-zag halves differ most)."""
    block = half_block_keys(q.shape[1])

    def attend(s):
        documents = None if segments is None else (segments[0][:, s], segments[1])
        return blocked_attention(
            q[:, s], k, v, pos[:, s], kv_pos, window=window, block_keys=block, segments=documents
        )

    return jnp.concatenate([attend(s) for s in halves(q.shape[1])], axis=1)


def gather_kv(
    k: Float[Array, "B T H Dh"],
    v: Float[Array, "B T H Dh"],
    positions: Int[Array, "B T"],
    mode: str = "auto",
    segment_ids: Int[Array, "B T"] | None = None,
) -> tuple[Array, Array, Array, Array | None]:
    """The global K/V, their positions and segment ids (None without) gathered whole onto every
    slice, once per step;
    or, where `mode` (Runtime.context_attention) picks ring attention (ops/ring_attention.py),
    left split [B, T, ...] in zig-zag order (balanced, like the cross-decoder's queries).

    Returned as one copy per device, stacked: [n, B, T, H, Dh] (positions [n, B, T]) split over
    the axis along n, for `cross_attention` only. Each copy is varying, so the cotangents of all
    cross layers add up on each device first and the gather's transpose is ONE reduce-scatter
    (an invariant copy would cost an all-reduce of the whole K/V gradient per layer).
    """
    check_length(k.shape[1])
    if choose(mode, k.shape, k.dtype.itemsize) == "ring":
        return tuple(None if x is None else balance(x) for x in (k, v, positions, segment_ids))

    def local(*xs):  # K/V gradients reduce in float32 (ops/collectives.py)
        return tuple(None if x is None else collectives.all_gather(x, AXIS, 1)[None] for x in xs)

    return shard(local, (SPLIT,) * 4, (P(AXIS),) * 4)(k, v, positions, segment_ids)


def cross_attention(
    q: Float[Array, "B T Hq Dh"],
    positions: Int[Array, "B T"],
    k: Float[Array, "*n B S Hkv Dh"],
    v: Float[Array, "*n B S Hkv Dh"],
    kv_positions: Int[Array, "*n B S"],
    segments: tuple[Int[Array, "B T"], Int[Array, "*n B S"]] | None = None,
    **kernel,
) -> Float[Array, "B T Hq Dh"]:
    """Local queries (split over the axis) against the gathered K/V (from `gather_kv`);
    `segments`: the queries' and (gathered) keys' segment ids, or None."""
    check_length(q.shape[1])
    if k.ndim == 4:  # not gathered: ring attention
        return ring_cross_attention(q, positions, k, v, kv_positions, segments)

    attend = halves_kernel(q, k.shape[-3], **kernel) or _by_halves

    def local(q, pos, k, v, kv_pos, segments):
        documents = {} if segments is None else {"segments": (segments[0], segments[1][0])}
        return attend(q, pos, k[0], v[0], kv_pos[0], **documents)

    specs = (SPLIT, SPLIT) + (P(AXIS),) * 3 + (None if segments is None else (SPLIT, P(AXIS)),)
    fn = shard(local, specs, SPLIT, attend is _by_halves)
    return fn(q, positions, k, v, kv_positions, segments)


def _route(x, source):
    """Moves halves of slices between devices: half s of device i becomes half source(i, s)[1]
    of device source(i, s)[0]. x [B, T/n, ...] per device, T/n even; one ppermute per
    (source half, target half), so each half crosses the axis once."""
    n, i, h = jax.lax.axis_size(AXIS), jax.lax.axis_index(AXIS), x.shape[1] // 2
    parts = (x[:, :h], x[:, h:])
    out = []
    for s in (0, 1):
        got = []
        for p in (0, 1):
            pairs = [(source(d, s)[0], d) for d in range(n) if source(d, s)[1] == p]
            got.append(jax.lax.ppermute(parts[p], AXIS, pairs))
        from_first = jnp.asarray([source(d, s)[1] == 0 for d in range(n)])[i]
        out.append(jnp.where(from_first, got[0], got[1]))
    return jnp.concatenate(out, axis=1)


def balanced(t: int) -> bool:
    """Whether `balance` reorders a length-t sequence (it needs an even slice length)."""
    n = sharding.tracing().context_size
    return n > 1 and t % (2 * n) == 0


def balance(x: Array) -> Array:
    """x [B, T, ...] split over the axis, reordered so that device i holds the half slices i and
    2n - 1 - i (zig-zag): every device then has as many causal (query, key) pairs. Unchanged
    where `balanced` is false. Positions must travel with the tokens (balance them too)."""
    if not balanced(x.shape[1]):
        return x
    n = sharding.tracing().context_size
    return shard(lambda x: _route(x, lambda d, s: zigzag_half(n, d, s)), (SPLIT,), SPLIT)(x)


def unbalance(x: Array) -> Array:
    """The inverse of `balance`: back to contiguous slices."""
    if not balanced(x.shape[1]):
        return x
    n = sharding.tracing().context_size
    return shard(lambda x: _route(x, lambda d, s: contiguous_half(n, d, s)), (SPLIT,), SPLIT)(x)


def cache_attention(
    q: Float[Array, "B Tq Hq Dh"],
    k_cache: Shaped[Array, "B S Hkv Dh"],
    v_cache: Shaped[Array, "B S Hkv Dh"],
    lengths: Int[Array, " B"],
    k_scale: Float[Array, "B S Hkv"] | None = None,
    v_scale: Float[Array, "B S Hkv"] | None = None,
) -> Float[Array, "B Tq Hq Dh"]:
    """The last Tq positions of each sequence against a cache split along S over the axis.

    Flash-decoding across devices: each slice scores its part of the cache, and the partial
    softmax numerators and denominators are merged by log-sum-exp (a pmax of the row maxima,
    then a psum of the rescaled partial sums). Only [B, Hq, Tq, Dh] values cross devices.
    `k_scale`, `v_scale`: an int8 cache, split alike; each device dequantizes its own slice.
    """
    check_length(k_cache.shape[1])
    scales = () if k_scale is None else (k_scale, v_scale)

    def local(q, k, v, lengths, *scales):
        if scales:
            k, v = (dequantize(x, s, q.dtype) for x, s in zip((k, v), scales))
        b, tq, hq, d = q.shape
        s, hkv = k.shape[1], k.shape[2]
        kv_pos = jax.lax.axis_index(AXIS) * s + jnp.arange(s)
        kv_pos = jnp.where(kv_pos[None] < lengths[:, None], kv_pos[None], -1)
        mask = position_mask(lengths[:, None] - tq + jnp.arange(tq), kv_pos)  # [B, Tq, S/n]
        qg = q.reshape(b, tq, hkv, hq // hkv, d)
        logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=f32) * d**-0.5
        logits = jnp.where(mask[:, None, None], logits, jnp.finfo(f32).min)
        top = jax.lax.pmax(jnp.max(logits, axis=-1, keepdims=True), AXIS)
        probs = jnp.exp(logits - top)
        denom = jax.lax.psum(jnp.sum(probs, axis=-1), AXIS)[..., None]  # [B, Hkv, G, Tq, 1]
        numer = jax.lax.psum(jnp.einsum("bhgqk,bkhd->bhgqd", probs, v.astype(f32)), AXIS)
        out = jnp.moveaxis(numer / denom, 3, 1)  # [B, Tq, Hkv, G, Dh]
        return out.reshape(b, tq, hq, d).astype(q.dtype)

    specs = (WHOLE, SPLIT, SPLIT, WHOLE) + (SPLIT,) * len(scales)
    return shard(local, specs, WHOLE)(q, k_cache, v_cache, lengths, *scales)
