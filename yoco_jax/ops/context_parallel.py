"""Context parallelism: the sequence split over the `context` mesh axis, one slice per device.

Each op is a `shard_map` that is manual over `context` only; the other mesh axes (data, fsdp,
tensor) stay automatic, so batch and head sharding pass through unchanged. Slice i holds global
positions [i * T/n, (i + 1) * T/n). Shapes below are global; `n` is the axis size.

- `retention`: each slice runs the chunkwise form from a zero state; the slices' final states
  and total log decays (small: [B, H, Dk, Dv] each) are all-gathered, an exclusive scan gives
  each slice its incoming state, and q_t * decay(start..t) * S_in is added to its outputs.
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

All of it is differentiable, so the backward passes are exact (all_gather transposes to a
reduce-scatter, in float32 for K/V; ppermute to the reverse ppermute).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from yoco_jax.ops import collectives
from yoco_jax.ops.attention import position_mask
from yoco_jax.ops.blocked_attention import blocked_attention
from yoco_jax.ops.context_kernels import halves_kernel
from yoco_jax.ops.retention import chunkwise_retention
from yoco_jax.ops.ring_attention import choose, contiguous_half, ring_cross_attention, zigzag_half

AXIS = "context"
f32 = jnp.float32
SPLIT = P(None, AXIS)  # [B, T, ...] split along T; other dims left to the automatic axes
WHOLE = P()
BLOCK_KEYS = 512  # keys per block of the blocked attention (fewer when the keys are fewer)


def context_size() -> int:
    """Size of the `context` axis of the mesh being traced under (1: none, or already manual)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or AXIS not in mesh.axis_names:
        return 1
    if mesh.axis_types[mesh.axis_names.index(AXIS)] == jax.sharding.AxisType.Manual:
        return 1
    return mesh.shape[AXIS]


def check_length(t: int, n: int | None = None) -> None:
    """Refuses a sequence that does not split into equal slices over the context axis."""
    n = context_size() if n is None else n
    if t % n:
        raise ValueError(
            f"sequence length {t} does not divide over the context axis of size {n}; "
            f"use a length that is a multiple of {n} (pad the batch) or a smaller mesh.context"
        )


def split_along_length(x: Array) -> Array:
    """Pins x [B, T, ...] to be split along T over the axis (other dims left free)."""
    free = P.UNCONSTRAINED
    return jax.lax.with_sharding_constraint(x, P(free, AXIS, *[free] * (x.ndim - 2)))


def _shard(fn, ins, outs, vma=True):  # vma=False around Pallas kernels (context_kernels.py)
    fn = jax.shard_map(fn, in_specs=ins, out_specs=outs, axis_names={AXIS}, check_vma=vma)
    return fn if vma else jax.jit(fn)  # unchecked, it runs under jit only (not eagerly)


def _scan_states(state, total, initial):
    """Exclusive scan over the axis of the slices' (state, total log decay) pairs.

    state [B, H, Dk, Dv] f32 (from a zero start), total [B, H] f32, per slice; initial: the
    state before the first slice. Returns (state entering this slice, state after the last).
    S_in(i) = exp(C_{i-1}) S0 + sum_{j<i} exp(C_{i-1} - C_j) S_j with C the inclusive cumsum.
    """
    i = jax.lax.axis_index(AXIS)
    # Gathered as invariant (every slice holds the same copy), so the final state is too.
    states = jax.lax.all_gather(state, AXIS, to="invarying")  # [n, B, H, Dk, Dv]
    totals = jax.lax.all_gather(total, AXIS, to="invarying")  # [n, B, H]
    cum = jnp.cumsum(totals, axis=0)  # inclusive
    j = jnp.arange(states.shape[0])[:, None, None]

    def combine(upto, include):  # decay-weighted sum of the states of slices j < upto (+ S0)
        # exp of -inf where excluded: zero weight, finite gradients.
        weights = jnp.exp(jnp.where(include, upto[None] - cum, -jnp.inf))
        out = jnp.einsum("nbh,nbhkv->bhkv", weights, states)
        return out + jnp.exp(upto)[..., None, None] * initial

    before_i = cum[i] - totals[i]  # log decay of all slices before i
    return combine(before_i, j < i), combine(cum[-1], j >= 0)


def retention(
    q: Float[Array, "B T H Dk"],
    k: Float[Array, "B T H Dk"],
    v: Float[Array, "B T H Dv"],
    log_gate: Float[Array, "B T H"],
    chunk_size: int,
    state: Float[Array, "B H Dk Dv"] | None = None,
):
    """Gated retention of sequences split over the context axis, as `chunkwise_retention`.

    Without `state` (training): the outputs, from a zero state. With an initial `state`
    (prefill; replicated over the axis): (outputs, the state after the last position).
    """
    check_length(q.shape[1])
    b, _, h, dk = q.shape
    initial = jnp.zeros((b, h, dk, v.shape[-1]), f32) if state is None else state.astype(f32)

    def local(q, k, v, log_gate, initial):
        # Each slice from a zero state typed as varying over the axis (the scan carry must be).
        zero = jax.lax.pcast(jnp.zeros_like(initial), AXIS, to="varying")
        out, last = chunkwise_retention(q, k, v, log_gate, chunk_size, zero)
        cum = jnp.cumsum(log_gate.astype(f32), axis=1)  # [B, T/n, H] decay from slice start
        incoming, final = _scan_states(last, cum[:, -1], initial)
        qd = q.astype(f32) * jnp.exp(cum)[..., None]
        out = out.astype(f32) + jnp.einsum("bthk,bhkv->bthv", qd, incoming)
        return out.astype(v.dtype), final

    out, final = _shard(local, (SPLIT,) * 4 + (WHOLE,), (SPLIT, WHOLE))(q, k, v, log_gate, initial)
    return out if state is None else (out, final)


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
    q: Float[Array, "B T H D"],
    k: Float[Array, "B T H D"],
    v: Float[Array, "B T H D"],
    positions: Int[Array, "B T"],
    window: int,
    **kernel,
) -> Float[Array, "B T H D"]:
    """Sliding-window attention (keys in (p - window, p]) over slices; kernel: halves_kernel's."""
    t, n = q.shape[1], context_size()
    check_length(t, n)
    local_len = t // n
    hops = min(n - 1, -(-(window - 1) // local_len))  # slices a window can reach back into
    attend = halves_kernel(q, t, window, **kernel) or _by_halves

    def local(q, k, v, pos):
        if hops == 0:
            return attend(q, pos, k, v, pos, window)
        keep = min(window - 1, hops * local_len)  # halo entries that can be in a window
        halo = lambda x: _halo(x, hops)[:, -keep:]
        # Positions travel as pos + 1 so that a missing slice (zeros) arrives as -1: empty.
        kv_pos = jnp.concatenate([halo(pos + 1) - 1, pos], axis=1)
        keys = jnp.concatenate([halo(k), k], axis=1)
        values = jnp.concatenate([halo(v), v], axis=1)
        return attend(q, pos, keys, values, kv_pos, window)

    return _shard(local, (SPLIT,) * 4, SPLIT, attend is _by_halves)(q, k, v, positions)


def _by_halves(q, pos, k, v, kv_pos, window=None):
    """Blocked attention of each half of the local queries on its own, so that each half skips
    the key blocks past its own last position (the two zig-zag halves differ most)."""
    t = q.shape[1]
    parts = [slice(None)] if t % 2 else [slice(None, t // 2), slice(t // 2, None)]
    block = min(BLOCK_KEYS, t // len(parts))  # no coarser than the queries: skips stay exact
    attend = lambda s: blocked_attention(q[:, s], k, v, pos[:, s], kv_pos, window=window,
                                         block_keys=block)  # fmt: skip
    return jnp.concatenate([attend(s) for s in parts], axis=1)


def gather_kv(
    k: Float[Array, "B T H D"],
    v: Float[Array, "B T H D"],
    positions: Int[Array, "B T"],
    mode: str = "auto",
) -> tuple[Array, Array, Array]:
    """The global K/V (and their positions) gathered whole onto every slice, once per step;
    or, where `mode` (Runtime.context_attention) picks ring attention (ops/ring_attention.py),
    left split [B, T, ...] in zig-zag order (balanced, like the cross-decoder's queries).

    Returned as one copy per device, stacked: [n, B, T, H, D] (positions [n, B, T]) split over
    the axis along n, for `cross_attention` only. Each copy is varying, so the cotangents of all
    cross layers add up on each device first and the gather's transpose is ONE reduce-scatter
    (an invariant copy would cost an all-reduce of the whole K/V gradient per layer).
    """
    check_length(k.shape[1])
    if choose(mode, k.shape, k.dtype.itemsize) == "ring":
        return tuple(map(balance, (k, v, positions)))

    def local(k, v, pos):  # K/V gradients reduce in float32 (ops/collectives.py)
        return tuple(collectives.all_gather(x, AXIS, 1)[None] for x in (k, v, pos))

    return _shard(local, (SPLIT,) * 3, (P(AXIS),) * 3)(k, v, positions)


def cross_attention(
    q: Float[Array, "B T Hq D"],
    positions: Int[Array, "B T"],
    k: Float[Array, "*n B S Hkv D"],
    v: Float[Array, "*n B S Hkv D"],
    kv_positions: Int[Array, "*n B S"],
    **kernel,
) -> Float[Array, "B T Hq D"]:
    """Local queries (split over the axis) against the gathered K/V (from `gather_kv`)."""
    check_length(q.shape[1])
    if k.ndim == 4:  # not gathered: ring attention
        return ring_cross_attention(q, positions, k, v, kv_positions)

    attend = halves_kernel(q, k.shape[-3], **kernel) or _by_halves
    local = lambda q, pos, k, v, kv_pos: attend(q, pos, k[0], v[0], kv_pos[0])
    specs = (SPLIT, SPLIT) + (P(AXIS),) * 3
    return _shard(local, specs, SPLIT, attend is _by_halves)(q, positions, k, v, kv_positions)


def _route(x, source):
    """Moves halves of slices between devices: half s of device i becomes half source(i, s)[1]
    of device source(i, s)[0]. x [B, T/n, ...] per device, T/n even; one ppermute per
    (source half, target half), so each half crosses the axis once."""
    n, i, h = jax.lax.axis_size(AXIS), jax.lax.axis_index(AXIS), x.shape[1] // 2
    halves = (x[:, :h], x[:, h:])
    out = []
    for s in (0, 1):
        got = [
            jax.lax.ppermute(
                halves[p], AXIS, [(source(d, s)[0], d) for d in range(n) if source(d, s)[1] == p]
            )  # fmt: skip
            for p in (0, 1)
        ]
        from_first = jnp.asarray([source(d, s)[1] == 0 for d in range(n)])[i]
        out.append(jnp.where(from_first, got[0], got[1]))
    return jnp.concatenate(out, axis=1)


def balanced(t: int) -> bool:
    """Whether `balance` reorders a length-t sequence (it needs an even slice length)."""
    n = context_size()
    return n > 1 and t % (2 * n) == 0


def balance(x: Array) -> Array:
    """x [B, T, ...] split over the axis, reordered so that device i holds the half slices i and
    2n - 1 - i (zig-zag): every device then has as many causal (query, key) pairs. Unchanged
    where `balanced` is false. Positions must travel with the tokens (balance them too)."""
    if not balanced(x.shape[1]):
        return x
    n = context_size()
    return _shard(lambda x: _route(x, lambda d, s: zigzag_half(n, d, s)), (SPLIT,), SPLIT)(x)


def unbalance(x: Array) -> Array:
    """The inverse of `balance`: back to contiguous slices."""
    if not balanced(x.shape[1]):
        return x
    n = context_size()
    return _shard(lambda x: _route(x, lambda d, s: contiguous_half(n, d, s)), (SPLIT,), SPLIT)(x)


def cache_attention(
    q: Float[Array, "B Tq Hq D"],
    k_cache: Float[Array, "B S Hkv D"],
    v_cache: Float[Array, "B S Hkv D"],
    lengths: Int[Array, " B"],
) -> Float[Array, "B Tq Hq D"]:
    """The last Tq positions of each sequence against a cache split along S over the axis.

    Flash-decoding across devices: each slice scores its part of the cache, and the partial
    softmax numerators and denominators are merged by log-sum-exp (a pmax of the row maxima,
    then a psum of the rescaled partial sums). Only [B, Hq, Tq, D] values cross devices.
    """
    check_length(k_cache.shape[1])

    def local(q, k, v, lengths):
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
        out = jnp.moveaxis(numer / denom, 3, 1)  # [B, Tq, Hkv, G, D]
        return out.reshape(b, tq, hq, d).astype(q.dtype)

    return _shard(local, (WHOLE, SPLIT, SPLIT, WHOLE), WHOLE)(q, k_cache, v_cache, lengths)
