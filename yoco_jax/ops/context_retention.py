"""Gated retention of a sequence split over the context axis (see ops/context_parallel.py).

Each slice runs the chunkwise form from a zero state; the slices' final states and total log
decays (small: [B, H, Dk, Dv] each) are all-gathered, an exclusive scan gives each slice its
incoming state, and q_t * decay(start..t) * S_in is added to its outputs. Differentiable: the
all-gather transposes to a reduce-scatter.

Packed documents (`starts`, ops/retention.py): a slice holding a document start passes on
nothing from before it, so the scan counts the starts per slice and a state reaches a later
slice only with no start in between; inside a slice the incoming state reaches the tokens
before its first start only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from yoco_jax.ops.context_parallel import AXIS, SPLIT, WHOLE, check_length, shard
from yoco_jax.ops.retention import chunkwise_retention

f32 = jnp.float32


def _scan_states(state, total, initial, resets=None):
    """Exclusive scan over the axis of the slices' (state, total log decay) pairs.

    state [B, H, Dk, Dv] f32 (from a zero start), total [B, H] f32, per slice; initial: the
    state before the first slice; resets [B] int32: the document starts in the slice (None:
    none). Returns (state entering this slice, state after the last).
    S_in(i) = exp(C_{i-1}) S0 + sum_{j<i} exp(C_{i-1} - C_j) S_j with C the inclusive cumsum,
    each term only where no slice after j (after S0: from the first) and before i resets.
    """
    i = jax.lax.axis_index(AXIS)
    # Gathered as invariant (every slice holds the same copy), so the final state is too.
    states = jax.lax.all_gather(state, AXIS, to="invarying")  # [n, B, H, Dk, Dv]
    totals = jax.lax.all_gather(total, AXIS, to="invarying")  # [n, B, H]
    cum = jnp.cumsum(totals, axis=0)  # inclusive
    n = states.shape[0]
    j = jnp.arange(n)[:, None, None]
    seen = jnp.zeros((n, 1, 1), jnp.int32)  # starts in slices 0..j, [n, B, 1]
    if resets is not None:
        seen = jnp.cumsum(jax.lax.all_gather(resets, AXIS, to="invarying"), axis=0)[..., None]

    def combine(upto, include, seen_upto):  # the states of slices j < upto (+ S0), weighted
        # exp of -inf where excluded: zero weight, finite gradients.
        include = include & (seen == seen_upto)
        weights = jnp.exp(jnp.where(include, upto[None] - cum, -jnp.inf))
        out = jnp.einsum("nbh,nbhkv->bhkv", weights, states)
        return out + (jnp.exp(upto) * (seen_upto == 0))[..., None, None] * initial

    before_i = cum[i] - totals[i]  # log decay of all slices before i
    seen_before = jnp.where(i > 0, seen[i - 1], 0)
    return combine(before_i, j < i, seen_before), combine(cum[-1], j >= 0, seen[-1])


def retention(
    q: Float[Array, "B T H Dk"],
    k: Float[Array, "B T H Dk"],
    v: Float[Array, "B T H Dv"],
    log_gate: Float[Array, "B T H"],
    chunk_size: int,
    state: Float[Array, "B H Dk Dv"] | None = None,
    starts: Bool[Array, "B T"] | None = None,
):
    """Gated retention of sequences split over the context axis, as `chunkwise_retention`
    (`starts`: packed documents, as there).

    Without `state` (training): the outputs, from a zero state. With an initial `state`
    (prefill; replicated over the axis): (outputs, the state after the last position).
    """
    check_length(q.shape[1])
    b, _, h, dk = q.shape
    initial = jnp.zeros((b, h, dk, v.shape[-1]), f32) if state is None else state.astype(f32)

    def local(q, k, v, log_gate, initial, starts):
        # Each slice from a zero state typed as varying over the axis (the scan carry must be).
        zero = jax.lax.pcast(jnp.zeros_like(initial), AXIS, to="varying")
        out, last = chunkwise_retention(q, k, v, log_gate, chunk_size, zero, starts=starts)
        cum = jnp.cumsum(log_gate.astype(f32), axis=1)  # [B, T/n, H] decay from slice start
        decay = jnp.exp(cum)
        resets = None
        if starts is not None:  # the incoming state reaches the tokens before the first start
            decay = decay * (jnp.cumsum(starts, axis=1) == 0)[..., None]
            resets = jnp.sum(starts, axis=1, dtype=jnp.int32)
        incoming, final = _scan_states(last, cum[:, -1], initial, resets)
        qd = q.astype(f32) * decay[..., None]
        out = out.astype(f32) + jnp.einsum("bthk,bhkv->bthv", qd, incoming)
        return out.astype(v.dtype), final

    specs = (SPLIT,) * 4 + (WHOLE, SPLIT)
    out, final = shard(local, specs, (SPLIT, WHOLE))(q, k, v, log_gate, initial, starts)
    return out if state is None else (out, final)
