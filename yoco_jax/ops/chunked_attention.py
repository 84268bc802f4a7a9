"""Blocked online-softmax attention of a chunk of queries against a long cache (pure XLA).

The path for chunked prefill where no Pallas kernel runs (CPU): the chunk's Tq queries are
the last Tq positions of each sequence's first `lengths[b]` cache entries (bottom-right causal
per row), and a `lax.fori_loop` walks the cache in key blocks keeping a running max and sum
per query. Memory is O(Tq x block) scores, never `[Tq, max_len]`; blocks past the longest row
(and, with a window, before the earliest visible key) are neither loaded nor computed. GQA
multiplies each kv head by its group of query heads (a reshape), K/V are never repeated.

Forward only: the loop bounds depend on `lengths`, so it is a while loop that reverse-mode
autodiff cannot differentiate (training uses `causal_attention`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int, Shaped

from yoco_jax.kernels.int8 import dequantize

DEFAULT_BLOCK_KEYS = 512


def chunked_attention(
    q: Float[Array, "B Tq Hq D"],
    k: Shaped[Array, "B S Hkv D"],
    v: Shaped[Array, "B S Hkv D"],
    lengths: Int[Array, " B"],
    *,
    window: int | None = None,
    block_keys: int = DEFAULT_BLOCK_KEYS,
    k_scale: Float[Array, "B S Hkv"] | None = None,
    v_scale: Float[Array, "B S Hkv"] | None = None,
) -> Float[Array, "B Tq Hq D"]:
    """Query i of row b sits at position p = lengths[b] - Tq + i and sees cache entries j with
    j <= p (and p - window < j with a window); entries at or past lengths[b] are never read
    into the result (stale or NaN slots included). A query with no visible key returns 0.
    Scores and statistics are float32; probabilities meet V in V's dtype (like the kernels).
    `k_scale`, `v_scale` `[B, S, Hkv]`: k, v are int8, each key block dequantized to q's dtype."""
    b, tq, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    bk = min(block_keys, s)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, s)
    qg = q.reshape(b, tq, hkv, hq // hkv, d)
    q_pos = lengths[:, None] - tq + jnp.arange(tq)  # [B, Tq]
    end = (jnp.max(lengths) + bk - 1) // bk
    first = jnp.int32(0)
    if window is not None:  # the earliest key any row's first query can see
        first = jnp.maximum(jnp.min(lengths) - tq - window + 1, 0) // bk

    def step(j, carry):
        acc, m, denom = carry
        key0 = j * bk
        start = jnp.minimum(key0, s - bk)  # keep the last block inside the cache
        kpos = start + jnp.arange(bk)  # [bk]
        # Keys before key0 were counted by the previous block (the last block moved back).
        valid = (kpos >= key0) & (kpos < lengths[:, None])  # [B, bk]
        mask = valid[:, None, :] & (kpos <= q_pos[:, :, None])  # [B, Tq, bk]
        if window is not None:
            mask &= kpos > q_pos[:, :, None] - window
        kb = lax.dynamic_slice_in_dim(k, start, bk, axis=1)
        vb = lax.dynamic_slice_in_dim(v, start, bk, axis=1)
        if k_scale is not None:
            block = lambda x, scale: dequantize(
                x, lax.dynamic_slice_in_dim(scale, start, bk, axis=1), q.dtype
            )
            kb, vb = block(kb, k_scale), block(vb, v_scale)
        vb = jnp.where(valid[:, :, None, None], vb, jnp.zeros_like(vb))  # no NaN from stale slots
        scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, kb, preferred_element_type=jnp.float32)
        scores = jnp.where(mask[:, None, None], scores * d**-0.5, -jnp.inf)
        m_next = jnp.maximum(m, jnp.max(scores, axis=-1))
        m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)
        correction = jnp.exp(m - m_safe)
        p = jnp.exp(scores - m_safe[..., None])
        denom = correction * denom + jnp.sum(p, axis=-1)
        pv = jnp.einsum(
            "bhgqk,bkhd->bhgqd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32
        )
        return correction[..., None] * acc + pv, m_next, denom

    stats = (b, hkv, hq // hkv, tq)
    init = (
        jnp.zeros((*stats, d), jnp.float32),
        jnp.full(stats, -jnp.inf, jnp.float32),
        jnp.zeros(stats, jnp.float32),
    )
    acc, _, denom = lax.fori_loop(first, end, step, init)
    seen = denom > 0.0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, denom, 1.0)[..., None], 0.0)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, tq, hq, d).astype(q.dtype)


def window_context(
    ring_k: Float[Array, "B W H D"],
    ring_v: Float[Array, "B W H D"],
    k: Float[Array, "B T H D"],
    v: Float[Array, "B T H D"],
    start: Int[Array, " B"],
) -> tuple[Float[Array, "B L H D"], Float[Array, "B L H D"], Int[Array, " B"]]:
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
