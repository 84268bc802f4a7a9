"""Gated retention in three forms that compute the same function.

With per-head log gates a_t = log(gamma_t) <= 0 and keys scaled by d_k ** -0.5:

    S_t = gamma_t * S_{t-1} + k_t^T v_t        (state [d_k, d_v] per head)
    o_t = q_t S_t

- `parallel_retention`: O(T^2) masked form, the obviously-right reference.
- `chunkwise_retention`: chunks in parallel (batched matmuls), states carried across chunks by
  an associative scan; linear in T.
- `recurrent_retention`: one token at a time (decode).

Decay sums, states and the key scale are float32 whatever the input dtype (q k^T is a product
of the inputs accumulated in float32, scaled after), so the three forms compute the same
function in bfloat16 too. Shapes: q, k `[B, T, H, Dk]`,
v `[B, T, H, Dv]`, log_gate `[B, T, H]`, state `[B, H, Dk, Dv]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

f32 = jnp.float32


def _dot(spec: str, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=f32)


def _decay_matrix(cum: Float[Array, "B T H"]) -> Float[Array, "B H T T"]:
    """exp(cum_i - cum_j) for j <= i, else 0 (exp of -inf keeps gradients finite)."""
    t = cum.shape[1]
    diff = cum.transpose(0, 2, 1)[..., :, None] - cum.transpose(0, 2, 1)[..., None, :]
    causal = jnp.tril(jnp.ones((t, t), bool))
    return jnp.exp(jnp.where(causal, diff, -jnp.inf))


def parallel_retention(
    q: Float[Array, "B T H Dk"],
    k: Float[Array, "B T H Dk"],
    v: Float[Array, "B T H Dv"],
    log_gate: Float[Array, "B T H"],
) -> Float[Array, "B T H Dv"]:
    """Reference O(T^2) form: out = ((q k^T) * D) v with D_ij = prod_{i>=s>j} gamma_s."""
    decay = _decay_matrix(jnp.cumsum(log_gate.astype(f32), axis=1))
    scores = _dot("bihd,bjhd->bhij", q, k) * (k.shape[-1] ** -0.5 * decay)
    return _dot("bhij,bjhd->bihd", scores, v).astype(v.dtype)


def _carry_states(
    initial: Float[Array, "B H Dk Dv"],
    decay: Float[Array, "B N H"],
    local: Float[Array, "B N H Dk Dv"],
) -> Float[Array, "B N+1 H Dk Dv"]:
    """States before each chunk and after the last: S_i = decay_{i-1} S_{i-1} + local_{i-1}.

    An associative scan of (decay, state) pairs, depth log N: the chunks' matmuls stay batched
    and only this elementwise recurrence crosses chunks."""
    ones = jnp.ones_like(decay[:, :1])
    decays = jnp.concatenate([ones, decay], axis=1)[..., None, None]
    states = jnp.concatenate([initial[:, None], local], axis=1)

    def combine(a, b):
        return a[0] * b[0], b[0] * a[1] + b[1]

    return jax.lax.associative_scan(combine, (decays, states), axis=1)[1]


def chunkwise_retention(
    q: Float[Array, "B T H Dk"],
    k: Float[Array, "B T H Dk"],
    v: Float[Array, "B T H Dv"],
    log_gate: Float[Array, "B T H"],
    chunk_size: int,
    state: Float[Array, "B H Dk Dv"] | None = None,
) -> tuple[Float[Array, "B T H Dv"], Float[Array, "B H Dk Dv"]]:
    """Chunkwise-parallel form for any T; returns the outputs and the final state.

    Every chunk's inner (masked, decayed) attention and its own state k^T v are batched
    matmuls over all chunks at once; the states are then carried across chunks by
    `_carry_states`, and each chunk adds q S of the state before it. T is padded up to a
    multiple of `chunk_size` with zero keys and zero log gates, which leave the state unchanged,
    so the returned state is the state after the last real token.
    """
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    if state is None:
        state = jnp.zeros((b, h, dk, dv), f32)
    c = min(chunk_size, t)
    pad = -t % c
    if pad:
        widths = [(0, 0), (0, pad)]
        q, k, v = (jnp.pad(x, widths + [(0, 0), (0, 0)]) for x in (q, k, v))
        log_gate = jnp.pad(log_gate, widths + [(0, 0)])
    n = (t + pad) // c
    q, k, v, log_gate = (x.reshape(b, n, c, *x.shape[2:]) for x in (q, k, v, log_gate))
    scale = dk**-0.5  # applied in float32: a bfloat16 k * scale would round
    cum = jnp.cumsum(log_gate.astype(f32), axis=2)  # [B, N, C, H]
    total = cum[:, :, -1]  # [B, N, H]: log decay across each chunk
    causal = jnp.tril(jnp.ones((c, c), bool))
    cum_h = jnp.moveaxis(cum, 2, 3)  # [B, N, H, C]
    diff = jnp.where(causal, cum_h[..., :, None] - cum_h[..., None, :], -jnp.inf)
    inner = _dot("bnihd,bnjhd->bnhij", q, k) * (scale * jnp.exp(diff))
    out = _dot("bnhij,bnjhd->bnihd", inner, v)
    to_end = jnp.exp(total[:, :, None] - cum)[..., None]  # decay from each position to its end
    local = _dot("bnjhk,bnjhv->bnhkv", k.astype(f32) * scale, v.astype(f32) * to_end)
    states = _carry_states(state.astype(f32), jnp.exp(total), local)  # [B, N+1, H, Dk, Dv]
    out += _dot("bnihk,bnhkv->bnihv", q.astype(f32) * jnp.exp(cum)[..., None], states[:, :-1])
    out = out.reshape(b, n * c, h, dv)[:, :t]
    return out.astype(v.dtype), states[:, -1]


def recurrent_retention(
    q: Float[Array, "B H Dk"],
    k: Float[Array, "B H Dk"],
    v: Float[Array, "B H Dv"],
    log_gate: Float[Array, "B H"],
    state: Float[Array, "B H Dk Dv"],
) -> tuple[Float[Array, "B H Dv"], Float[Array, "B H Dk Dv"]]:
    """One decoding step: S = gamma S + k^T v, o = q S."""
    k = k.astype(f32) * k.shape[-1] ** -0.5
    new_state = jnp.exp(log_gate.astype(f32))[..., None, None] * state + _dot(
        "bhk,bhv->bhkv", k, v.astype(f32)
    )
    out = _dot("bhk,bhkv->bhv", q.astype(f32), new_state)
    return out.astype(v.dtype), new_state
