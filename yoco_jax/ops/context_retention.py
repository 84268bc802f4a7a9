"""Gated retention of a sequence split over the context axis (see ops/context_parallel.py).

Each slice runs the chunkwise form from a zero state; the slices' final states and total log
decays (small: [B, H, Dk, Dv] each) are all-gathered, an exclusive scan gives each slice its
incoming state, and q_t * decay(start..t) * S_in is added to its outputs. Differentiable: the
all-gather transposes to a reduce-scatter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from yoco_jax.ops.context_parallel import AXIS, SPLIT, WHOLE, check_length, shard
from yoco_jax.ops.retention import chunkwise_retention

f32 = jnp.float32


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

    out, final = shard(local, (SPLIT,) * 4 + (WHOLE,), (SPLIT, WHOLE))(q, k, v, log_gate, initial)
    return out if state is None else (out, final)
