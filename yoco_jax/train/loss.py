"""Next-token cross-entropy that never holds float32 logits for the whole batch.

The vocabulary projection and the softmax run over chunks of `chunk` positions inside a
`lax.scan`; each chunk is rematerialized in the backward pass, so at most one [batch, chunk, vocab]
block of float32 logits is alive at a time (instead of [batch, time, vocab]).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    chunk: int = 1024,
) -> tuple[jax.Array, jax.Array]:
    """Summed masked cross-entropy and the number of counted tokens.

    hidden [B, T, D] (compute dtype), kernel [D, V] (the output projection), targets [B, T] int32,
    mask [B, T] float32 (0 = ignore). Returns (sum over tokens of mask * -log p(target), sum of
    mask), both float32 scalars. Chunks split the time axis, so the batch sharding is untouched.
    """
    batch, time, dim = hidden.shape
    chunk = max(1, min(chunk, time))
    pad = -time % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
    n_chunks = (time + pad) // chunk
    # [n_chunks, B, chunk, ...]: scan over time chunks, each keeping the full (sharded) batch.
    split = lambda x: jnp.moveaxis(x.reshape(batch, n_chunks, chunk, *x.shape[2:]), 1, 0)
    kernel = kernel.astype(hidden.dtype)

    @jax.checkpoint
    def chunk_loss(h, t, m):
        logits = jnp.einsum("bcd,dv->bcv", h, kernel, preferred_element_type=jnp.float32)
        log_norm = jax.nn.logsumexp(logits, axis=-1)
        # A one-hot contraction rather than a gather: it stays local when vocab is sharded.
        target_logit = jnp.sum(logits * jax.nn.one_hot(t, logits.shape[-1]), axis=-1)
        return jnp.sum((log_norm - target_logit) * m)

    def body(total, xs):
        return total + chunk_loss(*xs), None

    xs = (split(hidden), split(targets), split(mask.astype(jnp.float32)))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total, jnp.sum(mask.astype(jnp.float32))
