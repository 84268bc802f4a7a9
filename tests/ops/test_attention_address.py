"""The one attention address (ops/attention.py): what each Visibility computes, and where a
context mesh splits the call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yoco_jax import sharding
from yoco_jax.config import get_config
from yoco_jax.ops.attention import attend, cached, causal
from yoco_jax.ops.masked_attention import masked_attention, position_mask

RUNTIME = get_config("yoco-tiny").runtime  # attention_impl auto: XLA on CPU


def _qkv(t=32, s=None, hq=4, hkv=2, dh=16):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, t, hq, dh))
    kv = [jax.random.normal(key, (2, s or t, hkv, dh)) for key in keys[1:]]
    return q, *kv


@pytest.mark.parametrize("window", [None, 5])
def test_causal_is_the_masked_reference(window):
    q, k, v = _qkv()
    pos = jnp.broadcast_to(jnp.arange(32), (2, 32))
    want = masked_attention(q, k, v, position_mask(pos, pos, window))
    got = attend(q, k, v, causal(pos, window), RUNTIME)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "tq, window, junk", [(3, None, 1e4), (3, 4, 1e4), (20, None, jnp.nan), (20, 7, jnp.nan)]
)
def test_cached_queries_are_each_rows_last_positions(tq, window, junk):
    """Rows of 40 and 25 entries in a 64-slot cache whose unused slots hold junk (a prefill
    chunk's blocked path never reads them, even NaN)."""
    q, k, v = _qkv(tq, 64)
    lengths = jnp.asarray([40, 25])
    stale = jnp.arange(64)[None, :, None, None] >= lengths[:, None, None, None]
    k, v = (jnp.where(stale, junk, x) for x in (k, v))
    q_pos = lengths[:, None] - tq + jnp.arange(tq)
    kv_pos = jnp.where(jnp.arange(64) < lengths[:, None], jnp.arange(64), -1)
    clean = lambda x: jnp.where(stale, 0.0, x)
    want = masked_attention(q, clean(k), clean(v), position_mask(q_pos, kv_pos, window))
    got = attend(q, k, v, cached(lengths, window), RUNTIME)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_context_mesh_splits_windowed_attention_only():
    """Under context=4 a windowed causal call runs per slice (a shard_map, halos exchanged) and
    gives the unsplit numbers; the baseline's full causal attention is left to XLA."""
    q, k, v = _qkv(hkv=4)  # the sliding-window mixer's heads: as many keys as queries
    pos = jnp.broadcast_to(jnp.arange(32), (2, 32))
    whole = attend(q, k, v, causal(pos, 6), RUNTIME)
    mesh = sharding.make_mesh({"context": 4, "data": 2})
    with sharding.use_mesh(mesh):
        windowed = jax.jit(lambda q, k, v, p: attend(q, k, v, causal(p, 6), RUNTIME))
        full = lambda q, k, v, p: attend(q, k, v, causal(p), RUNTIME)
        assert "shard_map" in str(jax.make_jaxpr(windowed)(q, k, v, pos))
        assert "shard_map" not in str(jax.make_jaxpr(full)(q, k, v, pos))
        split = windowed(q, k, v, pos)
    np.testing.assert_allclose(split, whole, atol=1e-5)
