"""Blocked online-softmax attention by positions, with an exact flash-style backward (pure XLA).

The attention inside the context-parallel ops (yoco_jax.ops.context_parallel): queries are one
device's slice, keys the gathered global K/V (or a slice and its window halo). A loop walks the
keys in blocks with a running max and sum per query, so memory is O(Tq x block) scores, never
`[Tq, Tk]`; only the blocks in [first, end) are loaded and computed, the range of blocks that
hold a key some query can see. Keys entirely in the queries' future (or before every window)
cost nothing: on a slice of a causal sequence the loop stops at the slice's last position.

The loop bounds depend on the positions, which reverse-mode autodiff of a while loop cannot
handle, so the gradient is a custom VJP: the backward pass walks the same blocks, recomputes
the scores and uses the saved log-sum-exp (flash attention's backward), all in float32.

q [B, Tq, Hq, D]; k, v [B, Tk, Hkv, D] (query head h reads kv head h // (Hq // Hkv));
q_pos [B, Tq], kv_pos [B, Tk] global positions, negative for an empty slot. Query at p sees
keys at s with 0 <= s <= p (and p - window < s). A query that sees no key returns 0.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

f32 = jnp.float32
DEFAULT_BLOCK_KEYS = 512


def _key_range(q_pos, kv_pos, window, bk):
    """[first, end): the key blocks holding a key that some query can see (int32 scalars)."""
    seen = (kv_pos >= 0) & (kv_pos <= jnp.max(q_pos, axis=1, keepdims=True))
    if window is not None:
        seen &= kv_pos > jnp.min(q_pos, axis=1, keepdims=True) - window
    seen = jnp.any(seen, axis=0)  # [Tk]
    index = jnp.arange(seen.shape[0])
    first = jnp.min(jnp.where(seen, index, seen.shape[0])) // bk
    end = jnp.where(jnp.any(seen), jnp.max(jnp.where(seen, index, 0)) // bk + 1, 0)
    return first, end


def _scores(qg, k, v, q_pos, kv_pos, window, bk, j):
    """Block j of keys: (scaled scores [B, Hkv, G, Tq, bk] f32, -inf where hidden; its keys,
    values, first index). The last block is moved back inside Tk; keys it shares with the
    block before are hidden here (counted there)."""
    key0 = j * bk
    start = jnp.minimum(key0, k.shape[1] - bk)
    kb, vb, pb = (lax.dynamic_slice_in_dim(x, start, bk, axis=1) for x in (k, v, kv_pos))
    fresh = start + jnp.arange(bk) >= key0  # [bk]
    kp, qp = pb[:, None, :], q_pos[:, :, None]
    mask = fresh & (kp >= 0) & (kp <= qp)  # [B, Tq, bk]
    if window is not None:
        mask &= kp > qp - window
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, kb, preferred_element_type=f32) * qg.shape[-1] ** -0.5
    return jnp.where(mask[:, None, None], s, -jnp.inf), kb, vb, start


def _group(x, hkv):
    """[B, T, Hq, D] -> [B, T, Hkv, G, D]."""
    b, t, hq, d = x.shape
    return x.reshape(b, t, hkv, hq // hkv, d)


def _forward(q, k, v, q_pos, kv_pos, window, bk):
    b, tq, hq, d = q.shape
    qg = _group(q, k.shape[2])
    first, end = _key_range(q_pos, kv_pos, window, bk)

    def step(j, carry):
        acc, m, denom = carry
        s, _, vb, _ = _scores(qg, k, v, q_pos, kv_pos, window, bk, j)
        m_next = jnp.maximum(m, jnp.max(s, axis=-1))
        m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # no key yet: keep exp finite
        correction = jnp.exp(m - m_safe)
        p = jnp.exp(s - m_safe[..., None])
        pv = jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(v.dtype), vb, preferred_element_type=f32)
        return correction[..., None] * acc + pv, m_next, correction * denom + jnp.sum(p, -1)

    # Initial carries derived from q, so they carry q's sharding and varying-axes type.
    zero = jnp.zeros_like(qg, f32).transpose(0, 2, 3, 1, 4)
    init = (zero, zero[..., 0] - jnp.inf, zero[..., 0])
    acc, m, denom = lax.fori_loop(first, end, step, init)
    seen = denom > 0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, denom, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), jnp.inf)  # inf: p = 0
    return out.transpose(0, 3, 1, 2, 4).reshape(b, tq, hq, d).astype(q.dtype), lse


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, q_pos, kv_pos, window, bk):
    return _forward(q, k, v, q_pos, kv_pos, window, bk)[0]


def _attention_fwd(q, k, v, q_pos, kv_pos, window, bk):
    out, lse = _forward(q, k, v, q_pos, kv_pos, window, bk)
    return out, (q, k, v, q_pos, kv_pos, out, lse)


def _attention_bwd(window, bk, saved, d_out):
    q, k, v, q_pos, kv_pos, out, lse = saved
    hkv = k.shape[2]
    qg = _group(q, hkv)
    to_stats = lambda x: _group(x, hkv).astype(f32).transpose(0, 2, 3, 1, 4)  # [B,Hkv,G,Tq,D]
    do = to_stats(d_out)
    delta = jnp.sum(do * to_stats(out), axis=-1)  # [B, Hkv, G, Tq]
    scale = q.shape[-1] ** -0.5
    first, end = _key_range(q_pos, kv_pos, window, bk)

    def add_at(x, block, start):
        return lax.dynamic_update_slice_in_dim(
            x, lax.dynamic_slice_in_dim(x, start, bk, axis=1) + block, start, axis=1
        )

    def step(j, carry):
        dq, dk, dv = carry
        s, kb, vb, start = _scores(qg, k, v, q_pos, kv_pos, window, bk, j)
        p = jnp.exp(s - lse[..., None])  # the softmax, 0 where hidden
        dv = add_at(dv, jnp.einsum("bhgqk,bhgqd->bkhd", p, do), start)
        dp = jnp.einsum("bhgqd,bkhd->bhgqk", do, vb.astype(f32))
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum("bhgqk,bkhd->bqhgd", ds, kb.astype(f32))
        dk = add_at(dk, jnp.einsum("bhgqk,bqhgd->bkhd", ds, qg.astype(f32)), start)
        return dq, dk, dv

    zeros = lambda x: jnp.zeros_like(x, f32)
    dq, dk, dv = lax.fori_loop(first, end, step, (zeros(qg), zeros(k), zeros(v)))
    return dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blocked_attention(
    q: Float[Array, "B Tq Hq D"],
    k: Float[Array, "B Tk Hkv D"],
    v: Float[Array, "B Tk Hkv D"],
    q_pos: Int[Array, "B Tq"],
    kv_pos: Int[Array, "B Tk"],
    *,
    window: int | None = None,
    block_keys: int = DEFAULT_BLOCK_KEYS,
) -> Float[Array, "B Tq Hq D"]:
    """Causal (optionally sliding-window) attention by positions; see the module docstring."""
    bk = min(block_keys, k.shape[1])
    return _attention(q, k, v, q_pos.astype(jnp.int32), kv_pos.astype(jnp.int32), window, bk)
