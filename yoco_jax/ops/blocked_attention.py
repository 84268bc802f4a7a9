"""Blocked online-softmax attention by positions, with an exact flash-style backward (pure XLA):
the one XLA implementation of the online softmax.

It runs inside the context-parallel ops (yoco_jax.ops.context_parallel: queries are one
device's slice, keys the gathered global K/V or a slice and its window halo), each hop of ring
attention (its forward and backward, `forward_with_lse` and `backward`), and a prefill chunk
against a cache where no kernel runs (ops/chunked_attention.py, a wrapper). A loop walks the
keys in blocks with a running max and sum per query, so memory is O(Tq x block) scores, never
`[Tq, Tk]`; only the blocks in [first, end) are loaded and computed, the range of blocks that
hold a key some query can see. Keys entirely in the queries' future (or before every window)
cost nothing: on a slice of a causal sequence the loop stops at the slice's last position.

The loop bounds depend on the positions, which reverse-mode autodiff of a while loop cannot
handle, so the gradient is a custom VJP: the backward pass walks the same blocks, recomputes
the scores and uses the saved log-sum-exp (flash attention's backward), all in float32.

q [B, Tq, Hq, Dh]; k, v [B, Tk, Hkv, Dh] (query head h reads kv head h // (Hq // Hkv));
q_pos [B, Tq], kv_pos [B, Tk] global positions, negative for an empty slot; or kv_pos [B]: the
row lengths of a cache whose key j sits at position j (present below the row's length; no
[B, Tk] array is then made, so memory stays independent of the cache). Query at p sees
keys at s with 0 <= s <= p (and p - window < s). A query that sees no key returns 0. Hidden
keys never reach the result, even NaN ones (the stale slots of a cache): their values are
zeroed before they meet the probabilities. `segments` (q_seg [B, Tq], kv_seg [B, Tk], or None):
packed documents, a query sees only keys of its own segment (ops/documents.py).

An int8 cache (`k_scale`, `v_scale` [B, Tk, Hkv], kernels/int8.py) is dequantized to q's dtype
one key block at a time inside the loop, never whole; it is read, not differentiated, so that
call runs the forward alone.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int, Shaped

from yoco_jax.kernels.int8 import dequantize

f32 = jnp.float32
BLOCK_KEYS = 512  # keys per loop step (fewer when the keys are fewer); memory O(Tq x BLOCK_KEYS)


def _key_range(q_pos, kv_pos, window, bk):
    """[first, end): the key blocks holding a key that some query can see (int32 scalars)."""
    if kv_pos.ndim == 1:  # a cache's lengths: blocks up to the longest row's end
        first = jnp.int32(0)
        if window is not None:  # the earliest key any query can see
            first = jnp.maximum(jnp.min(q_pos) - window + 1, 0) // bk
        return first, (jnp.max(kv_pos) + bk - 1) // bk
    seen = (kv_pos >= 0) & (kv_pos <= jnp.max(q_pos, axis=1, keepdims=True))
    if window is not None:
        seen &= kv_pos > jnp.min(q_pos, axis=1, keepdims=True) - window
    seen = jnp.any(seen, axis=0)  # [Tk]
    index = jnp.arange(seen.shape[0])
    first = jnp.min(jnp.where(seen, index, seen.shape[0])) // bk
    end = jnp.where(jnp.any(seen), jnp.max(jnp.where(seen, index, 0)) // bk + 1, 0)
    return first, end


def _scores(qg, k, v, q_pos, kv_pos, window, bk, j, segments=None, scales=None):
    """Block j of keys: (scaled scores [B, Hkv, G, Tq, bk] f32, -inf where hidden; its keys,
    values (0 at empty slots), first index). The last block is moved back inside Tk; keys it
    shares with the block before are hidden here (counted there). `scales`: (k_scale,
    v_scale) of int8 k, v, the block's keys and values then dequantized to q's dtype."""
    key0 = j * bk
    start = jnp.minimum(key0, k.shape[1] - bk)
    block = lambda x: lax.dynamic_slice_in_dim(x, start, bk, axis=1)
    kb, vb = block(k), block(v)
    if scales is not None:
        kb, vb = (dequantize(x, block(s), qg.dtype) for x, s in zip((kb, vb), scales))
    if kv_pos.ndim == 1:  # a cache's lengths: key i at position i, -1 past the row's end
        index = start + jnp.arange(bk)
        pb = jnp.where(index < kv_pos[:, None], index, -1)
    else:
        pb = lax.dynamic_slice_in_dim(kv_pos, start, bk, axis=1)
    present = (start + jnp.arange(bk) >= key0) & (pb >= 0)  # [B, bk]
    vb = jnp.where(present[:, :, None, None], vb, jnp.zeros_like(vb))  # no NaN from stale slots
    kp, qp = pb[:, None, :], q_pos[:, :, None]
    mask = present[:, None, :] & (kp <= qp)  # [B, Tq, bk]
    if window is not None:
        mask &= kp > qp - window
    if segments is not None:
        kv_seg = lax.dynamic_slice_in_dim(segments[1], start, bk, axis=1)
        mask &= segments[0][:, :, None] == kv_seg[:, None, :]
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, kb, preferred_element_type=f32) * qg.shape[-1] ** -0.5
    return jnp.where(mask[:, None, None], s, -jnp.inf), kb, vb, start


def _group(x, hkv):
    """[B, T, Hq, Dh] -> [B, T, Hkv, G, Dh]."""
    b, t, hq, d = x.shape
    return x.reshape(b, t, hkv, hq // hkv, d)


def forward_with_lse(q, k, v, q_pos, kv_pos, window, bk, segments=None, scales=None):
    """(output [B, Tq, Hq, Dh] in q's dtype, log-sum-exp [B, Hkv, G, Tq] float32, inf where a
    query sees no key); `bk`: keys per block (at most Tk). Positions int32. `scales`: as in
    `_scores`."""
    b, tq, hq, d = q.shape
    qg = _group(q, k.shape[2])
    first, end = _key_range(q_pos, kv_pos, window, bk)

    def step(j, carry):
        acc, m, denom = carry
        s, _, vb, _ = _scores(qg, k, v, q_pos, kv_pos, window, bk, j, segments, scales)
        m_next = jnp.maximum(m, jnp.max(s, axis=-1))
        m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # no key yet: keep exp finite
        correction = jnp.exp(m - m_safe)
        p = jnp.exp(s - m_safe[..., None])
        pv = jnp.einsum("bhgqk,bkhd->bhgqd", p.astype(vb.dtype), vb, preferred_element_type=f32)
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
def _attention(q, k, v, q_pos, kv_pos, window, bk, segments):
    return forward_with_lse(q, k, v, q_pos, kv_pos, window, bk, segments)[0]


def _attention_fwd(q, k, v, q_pos, kv_pos, window, bk, segments):
    out, lse = forward_with_lse(q, k, v, q_pos, kv_pos, window, bk, segments)
    return out, (q, k, v, q_pos, kv_pos, out, lse, segments)


def backward(window, bk, saved, d_out):
    """(dq, dk, dv, None, None, None) of `forward_with_lse` from what it saved, `(q, k, v,
    q_pos, kv_pos, out, lse, segments)`, and the output's cotangent (lse may be another call's:
    the ring's global one). Accumulates in float32; returns the inputs' dtypes."""
    q, k, v, q_pos, kv_pos, out, lse, segments = saved
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
        s, kb, vb, start = _scores(qg, k, v, q_pos, kv_pos, window, bk, j, segments)
        p = jnp.exp(s - lse[..., None])  # the softmax, 0 where hidden
        dv = add_at(dv, jnp.einsum("bhgqk,bhgqd->bkhd", p, do), start)
        dp = jnp.einsum("bhgqd,bkhd->bhgqk", do, vb.astype(f32))
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum("bhgqk,bkhd->bqhgd", ds, kb.astype(f32))
        dk = add_at(dk, jnp.einsum("bhgqk,bqhgd->bkhd", ds, qg.astype(f32)), start)
        return dq, dk, dv

    zeros = lambda x: jnp.zeros_like(x, f32)
    dq, dk, dv = lax.fori_loop(first, end, step, (zeros(qg), zeros(k), zeros(v)))
    dq = dq.reshape(q.shape).astype(q.dtype)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


_attention.defvjp(_attention_fwd, backward)


def blocked_attention(
    q: Float[Array, "B Tq Hq Dh"],
    k: Shaped[Array, "B Tk Hkv Dh"],
    v: Shaped[Array, "B Tk Hkv Dh"],
    q_pos: Int[Array, "B Tq"],
    kv_pos: Int[Array, "B Tk"] | Int[Array, " B"],
    *,
    window: int | None = None,
    block_keys: int = BLOCK_KEYS,
    k_scale: Float[Array, "B Tk Hkv"] | None = None,
    v_scale: Float[Array, "B Tk Hkv"] | None = None,
    segments: tuple[Int[Array, "B Tq"], Int[Array, "B Tk"]] | None = None,
) -> Float[Array, "B Tq Hq Dh"]:
    """Causal (optionally sliding-window) attention by positions; see the module docstring."""
    bk = min(block_keys, k.shape[1])
    q_pos, kv_pos = q_pos.astype(jnp.int32), kv_pos.astype(jnp.int32)
    if k_scale is not None:  # an int8 cache: the forward alone
        scales = (k_scale, v_scale)
        return forward_with_lse(q, k, v, q_pos, kv_pos, window, bk, segments, scales)[0]
    return _attention(q, k, v, q_pos, kv_pos, window, bk, segments)
