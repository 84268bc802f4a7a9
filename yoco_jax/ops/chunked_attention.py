"""A chunk of queries against a long cache by lengths (pure XLA): the blocked online softmax
of ops/blocked_attention.py with positions made from the lengths.

The path for chunked prefill where no Pallas kernel runs (CPU): the chunk's Tq queries are
the last Tq positions of each sequence's first `lengths[b]` cache entries (bottom-right causal
per row). Memory is O(Tq x block) scores, never `[Tq, max_len]`; blocks past the longest row
(and, with a window, before the earliest visible key) are neither loaded nor computed.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from yoco_jax.ops.blocked_attention import BLOCK_KEYS, blocked_attention


def chunked_attention(
    q: Float[Array, "B Tq Hq Dh"],
    k: Float[Array, "B S Hkv Dh"],
    v: Float[Array, "B S Hkv Dh"],
    lengths: Int[Array, " B"],
    *,
    window: int | None = None,
    block_keys: int = BLOCK_KEYS,
) -> Float[Array, "B Tq Hq Dh"]:
    """Query i of row b sits at position p = lengths[b] - Tq + i and sees cache entries j with
    j <= p (and p - window < j with a window); entries at or past lengths[b] are never read
    into the result (stale or NaN slots included). A query with no visible key returns 0.
    Scores and statistics are float32; probabilities meet V in V's dtype (like the kernels)."""
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, k.shape[1])
    q_pos = lengths[:, None] - q.shape[1] + jnp.arange(q.shape[1])
    return blocked_attention(q, k, v, q_pos, lengths, window=window, block_keys=block_keys)


def window_context(
    ring_k: Float[Array, "B W H Dh"],
    ring_v: Float[Array, "B W H Dh"],
    k: Float[Array, "B T H Dh"],
    v: Float[Array, "B T H Dh"],
    start: Int[Array, " B"],
) -> tuple[Float[Array, "B L H Dh"], Float[Array, "B L H Dh"], Int[Array, " B"]]:
    """A sliding-window ring (position p in slot p % W) and a chunk of new K/V starting at
    position start[b], laid out contiguously for `chunked_attention`: each row's min(start, W)
    cached positions in order, then its T new ones (L = W + T, the rest unused), and the row
    lengths min(start, W) + T. Query i of the chunk is then the row's (Tq - i)-th last entry."""
    w, t = ring_k.shape[1], k.shape[1]
    n_old = jnp.minimum(start, w)[:, None]  # [B, 1]
    j = jnp.arange(w + t)[None, :]
    ring_slot = (start[:, None] - n_old + j) % w
    index = jnp.where(j < n_old, ring_slot, w + jnp.minimum(j - n_old, t - 1))[..., None, None]
    take = lambda old, new: jnp.take_along_axis(
        jnp.concatenate([old, new.astype(old.dtype)], axis=1), index, axis=1
    )
    return take(ring_k, k), take(ring_v, v), n_old[:, 0] + t
