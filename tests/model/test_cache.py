"""The cache types: capacity, construction, size in bytes, writing and growth, against plain
numpy bookkeeping (no model runs)."""

import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.model.cache import (
    KVCache,
    WindowKV,
    cache_bytes,
    init_cache,
    resize_cache,
    tree_bytes,
)

CONFIGS = {
    "yoco": dict(),
    "swa": dict(sliding_window=5),
    "transformer": dict(arch="transformer"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_capacity_bytes_and_growth(name):
    cfg = yoco_jax.get_config("yoco-tiny", **CONFIGS[name])
    cache = init_cache(cfg, 3, 20, "bfloat16")
    assert cache.max_len == 20 and cache.kv_dtype == jnp.bfloat16
    assert tree_bytes(cache) == cache_bytes(cfg, 3, 20, "bfloat16")
    grown = resize_cache(cache, 33)
    assert grown.max_len == 33 and tree_bytes(grown) == cache_bytes(cfg, 3, 33, "bfloat16")
    cut = resize_cache(grown, 20)  # nothing written yet: any length fits
    assert cut.max_len == 20 and tree_bytes(cut) == cache_bytes(cfg, 3, 20, "bfloat16")
    full = grown._replace(lengths=jnp.array([3, 21, 0], jnp.int32))
    with pytest.raises(ValueError, match="holding 21 tokens to 20 positions"):
        resize_cache(full, 20)


def test_kv_write_puts_tokens_at_their_positions_and_drops_padding():
    rng = np.random.default_rng(0)
    cache = KVCache(jnp.zeros((2, 6, 1, 2)), jnp.zeros((2, 6, 1, 2)))
    k = rng.normal(size=(2, 3, 1, 2)).astype(np.float32)
    positions = np.array([[0, 1, 2], [4, 5, 6]])  # row 1's third token is padding
    valid = np.array([[True, True, True], [True, True, False]])
    out = cache.write(*map(jnp.asarray, (k, -k, positions, valid)))
    want = np.zeros((2, 6, 1, 2), np.float32)
    want[0, :3], want[1, 4:6] = k[0], k[1, :2]
    np.testing.assert_array_equal(out.k, want)
    np.testing.assert_array_equal(out.v, -want)


def test_window_write_keeps_the_last_window_positions_in_their_slots():
    window, rng = 4, np.random.default_rng(1)
    ring = WindowKV(jnp.zeros((2, window, 1, 1)), jnp.zeros((2, window, 1, 1)))
    slots = np.zeros((2, window))
    written = [0, 0]
    for lengths in ([3, 6], [5, 2], [1, 4]):  # chunks of 6 columns, padding after each row's
        t = max(lengths) + 1
        k = rng.normal(size=(2, t, 1, 1)).astype(np.float32)
        positions = np.array([w + np.arange(t) for w in written])
        valid = np.arange(t)[None] < np.array(lengths)[:, None]
        ring = ring.write(*map(jnp.asarray, (k, k, positions, valid)))
        for b, n in enumerate(lengths):
            for i in range(n):
                slots[b, (written[b] + i) % window] = k[b, i, 0, 0]
            written[b] += n
    np.testing.assert_array_equal(np.asarray(ring.k)[..., 0, 0], slots)
