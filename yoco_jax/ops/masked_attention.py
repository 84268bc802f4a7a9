"""Softmax attention with an explicit position mask: the XLA reference, and decode's XLA path.

q `[B, Tq, Hq, Dh]`, k and v `[B, Tk, Hkv, Dh]`; query head h reads kv head h // (Hq // Hkv).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


def masked_attention(
    q: Float[Array, "B Tq Hq Dh"],
    k: Float[Array, "B Tk Hkv Dh"],
    v: Float[Array, "B Tk Hkv Dh"],
    mask: Bool[Array, "B Tq Tk"],
) -> Float[Array, "B Tq Hq Dh"]:
    """Plain softmax attention in float32; rows with no allowed key return finite garbage."""
    b, tq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, tq, hkv, hq // hkv, d)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    logits = logits * d**-0.5
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum(
        "bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.reshape(b, tq, hq, d).astype(q.dtype)


def position_mask(
    q_pos: Int[Array, "B Tq"],
    kv_pos: Int[Array, "B Tk"],
    window: int | None = None,
    segments: tuple[Int[Array, "B Tq"], Int[Array, "B Tk"]] | None = None,
) -> Bool[Array, "B Tq Tk"]:
    """Causal (kv_pos <= q_pos), optionally windowed (kv_pos > q_pos - window) and within one
    packed document (`segments`: the queries' and keys' segment ids, equal).

    Negative kv positions mark empty slots.
    """
    qp, kp = q_pos[:, :, None], kv_pos[:, None, :]
    mask = (kp <= qp) & (kp >= 0)
    if window is not None:
        mask &= kp > qp - window
    if segments is not None:
        mask &= segments[0][:, :, None] == segments[1][:, None, :]
    return mask
