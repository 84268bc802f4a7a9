"""Slow, obviously-right XLA attention: the reference the kernels are tested against and the
"xla" path of bench/attention.py. Materializes the `[B, Hkv, G, Tq, Tk]` score tensor in float32;
GQA groups query heads (reshape) instead of repeating K/V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from yoco_jax.kernels.common import default_scale


def _grouped_attention(q, k, v, mask, sm_scale):
    """q `[B, Tq, Hq, D]`, k/v `[B, Tk, Hkv, D]`, mask broadcastable to `[B, 1, 1, Tq, Tk]`."""
    batch, q_len, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    q = q.reshape(batch, q_len, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores * default_scale(sm_scale, head_dim), -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    # Rows without any visible key give 0, not NaN (as flash_attn does).
    weights = jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v.astype(jnp.float32))
    return out.reshape(batch, q_len, num_heads, head_dim).astype(q.dtype)


def attention_reference(q, k, v, *, causal=True, window=None, sm_scale=None):
    """Same contract as `kernels.flash_attention`: query i sits at position Tk - Tq + i; causal
    keeps keys at positions <= its own, `window=w` keeps keys in (p - w, p]."""
    q_pos = k.shape[1] - q.shape[1] + jnp.arange(q.shape[1])[:, None]
    k_pos = jnp.arange(k.shape[1])[None, :]
    mask = jnp.ones((q.shape[1], k.shape[1]), bool)
    if causal:
        mask &= k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return _grouped_attention(q, k, v, mask, sm_scale)


def decode_attention_reference(q, k_cache, v_cache, lengths, *, window=None, sm_scale=None):
    """Same contract as `kernels.decode_attention` and `kernels.chunk_attention`: sequence b has
    lengths[b] valid cache entries and its Tq queries are its last Tq positions (causal among
    themselves); `window=w` also drops entries at or before the query's position - w."""
    q_pos = lengths[:, None, None] - q.shape[1] + jnp.arange(q.shape[1])[None, :, None]
    k_pos = jnp.arange(k_cache.shape[1])[None, None, :]
    mask = (k_pos <= q_pos) & (k_pos < lengths[:, None, None])
    if window is not None:
        mask &= k_pos > q_pos - window
    return _grouped_attention(q, k_cache, v_cache, mask[:, None, None], sm_scale)
