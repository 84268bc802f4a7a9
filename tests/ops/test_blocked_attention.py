"""Blocked attention by positions (the context-parallel ops' attention) equals plain masked
attention, values and gradients, and never reads the key blocks no query can see."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yoco_jax.ops.blocked_attention import blocked_attention
from yoco_jax.ops.masked_attention import masked_attention, position_mask

B, TQ, TK, HQ, HKV, D = 2, 7, 23, 4, 2, 8  # 23 keys in blocks of 3: the last block moves back


def _case(seed=0):
    rng = np.random.default_rng(seed)
    q, w = (jnp.asarray(rng.normal(size=(B, TQ, HQ, D)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(B, TK, HKV, D)), jnp.float32) for _ in range(2))
    # Rows at different positions (a slice of a longer sequence); key slot 20 empty (-1).
    q_pos = jnp.asarray([np.arange(9, 16), np.arange(3, 10)], jnp.int32)
    kv_pos = jnp.asarray(np.where(np.arange(TK) == 20, -1, np.arange(TK)), jnp.int32)
    return q, k, v, w, q_pos, jnp.broadcast_to(kv_pos, (B, TK))


@pytest.mark.parametrize("window", [None, 5])
def test_blocked_attention_equals_masked_attention_with_gradients(window):
    q, k, v, w, q_pos, kv_pos = _case()
    mask = position_mask(q_pos, kv_pos, window)
    want_fn = lambda q, k, v: jnp.sum(w * masked_attention(q, k, v, mask))
    got_fn = lambda q, k, v: jnp.sum(
        w * blocked_attention(q, k, v, q_pos, kv_pos, window=window, block_keys=3)
    )
    want = jax.value_and_grad(want_fn, argnums=(0, 1, 2))(q, k, v)
    got = jax.jit(jax.value_and_grad(got_fn, argnums=(0, 1, 2)))(q, k, v)
    for g, x in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, x, rtol=1e-5, atol=1e-5 * np.max(np.abs(x)))


@pytest.mark.parametrize("window", [None, 5])
def test_key_blocks_no_query_can_see_are_never_read(window):
    """NaN in every key block wholly in the queries' future (and, with a window, wholly before
    every window) would poison the output and the gradients if any of it were read."""
    q, k, v, w, q_pos, kv_pos = _case(1)
    # Blocks of 3: the last query is at position 15, so keys 18.. (blocks 6, 7) are its future.
    hidden = np.arange(TK) >= 18
    if window is not None:  # the first row alone (positions 9..15): its windows start at key 5
        q, w, q_pos, kv_pos = q[:1], w[:1], q_pos[:1], kv_pos[:1]
        hidden |= np.arange(TK) < 3  # block 0
    poison = lambda x: jnp.where(hidden[None, :, None, None], jnp.nan, x[: len(q)])
    loss = lambda q, k, v: jnp.sum(
        w * blocked_attention(q, k, v, q_pos, kv_pos, window=window, block_keys=3)
    )
    got = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, poison(k), poison(v))
    want = jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k[: len(q)], v[: len(q)])
    for g, x in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, x, rtol=1e-6)


def test_a_query_that_sees_no_key_returns_zero():
    q, k, v, _, q_pos, kv_pos = _case()
    out = blocked_attention(q, k, v, q_pos, jnp.full_like(kv_pos, -1), block_keys=3)
    np.testing.assert_array_equal(out, 0.0)
