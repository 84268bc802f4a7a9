"""A prefill chunk against a long cache: the blocked XLA path and the Pallas chunk kernel (GPU and
TPU families, interpret mode) against the plain reference, and chunked prefill of whole models
against a one-chunk prefill."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.inference.chunked_prefill import prefill_tokens
from yoco_jax.kernels import chunk_attention
from yoco_jax.kernels.reference import decode_attention_reference
from yoco_jax.ops.chunked_attention import chunked_attention, window_context

# (batch, Tq, S, Hq, Hkv, D, lengths, window): GQA 3 and 2, caches that 16-key blocks do not
# divide, rows shorter than the chunk (queries at negative positions see nothing), windows.
CASES = {
    "gqa3_ragged": (3, 21, 70, 6, 2, 16, [70, 33, 10], None),
    "gqa2_window": (2, 19, 45, 4, 2, 32, [45, 30], 9),
    "gqa1_window_ragged": (2, 24, 61, 2, 2, 16, [24, 57], 5),
}


def _inputs(case):
    batch, q_len, cache_len, heads, kv_heads, head_dim, lengths, window = CASES[case]
    keys = jax.random.split(jax.random.key(len(case)), 3)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, cache_len, kv_heads, head_dim))
    v = jax.random.normal(keys[2], (batch, cache_len, kv_heads, head_dim))
    lengths = jnp.asarray(lengths, jnp.int32)
    want = decode_attention_reference(q, k, v, lengths, window=window)
    # Entries past each row's length are stale: NaN there must not reach the result.
    stale = jnp.arange(cache_len)[None, :, None, None] >= lengths[:, None, None, None]
    k, v = jnp.where(stale, jnp.nan, k), jnp.where(stale, jnp.nan, v)
    return q, k, v, lengths, window, want


def _rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@pytest.mark.parametrize("case", list(CASES))
def test_blocked_xla_matches_reference(case):
    q, k, v, lengths, window, want = _inputs(case)
    got = jax.jit(lambda *a: chunked_attention(*a, window=window, block_keys=16))(q, k, v, lengths)
    assert got.shape == want.shape and _rel(got, want) < 1e-5


@pytest.mark.parametrize(
    "backend,case", [("gpu", c) for c in CASES] + [("tpu", "gqa3_ragged"), ("tpu", "gqa2_window")]
)
def test_chunk_kernel_matches_reference(backend, case):
    q, k, v, lengths, window, want = _inputs(case)
    kernel = lambda *a: chunk_attention(
        *a, window=window, backend=backend, interpret=True, block_rows=16, block_keys=16
    )
    got = jax.jit(kernel)(q, k, v, lengths)
    assert got.shape == want.shape and _rel(got, want) < 1e-5


def test_blocked_xla_memory_does_not_grow_with_the_cache():
    """No [Tq, max_len] scores: XLA's temporary buffers are the same for a 16x longer cache."""

    def temp_bytes(cache_len):
        q = jax.ShapeDtypeStruct((1, 64, 4, 16), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, cache_len, 2, 16), jnp.float32)
        lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
        compiled = jax.jit(chunked_attention).lower(q, kv, kv, lengths).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    short, long = temp_bytes(1024), temp_bytes(16384)
    assert long == short
    assert long < 64 * 16384 * 4 * 4  # less than the [Tq, S] float32 scores of the 4 heads


def test_window_context_orders_ring_and_chunk_by_position():
    """Window 4, new chunk of 3: row 0 starts at 2 (ring half empty), row 1 at 6 (ring full,
    positions 2..5 in slots 2, 3, 0, 1). Values are the positions themselves."""
    ring = jnp.asarray([[0, 1, -9, -9], [4, 5, 2, 3]], jnp.float32)[..., None, None]
    new = jnp.asarray([[2, 3, 4], [6, 7, 8]], jnp.float32)[..., None, None]
    k, v, lengths = window_context(ring, ring, new, new, jnp.asarray([2, 6]))
    np.testing.assert_array_equal(lengths, [5, 7])
    np.testing.assert_array_equal(k[0, :5, 0, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(k[1, :7, 0, 0], [2, 3, 4, 5, 6, 7, 8])
    assert k.shape == v.shape == (2, 7, 1, 1)


def _prefill(model, tokens, lengths, chunk):
    return prefill_tokens(model, tokens, lengths, max_len=45, prefill_chunk=chunk)


@pytest.fixture(scope="module", params=["transformer-tiny", "yoco-swa-tiny"])
def one_chunk(request):
    """A 2-layer model, two prompts of 40 and 27 tokens, prefilled in one chunk (XLA)."""
    # Window 24 > the 20-token chunks: the second chunk meets a ring that is not yet full.
    cfg = yoco_jax.get_config(request.param, n_layers=2, attention_impl="xla")
    if cfg.sliding_window is not None:
        cfg = yoco_jax.config.replace_checked(cfg, sliding_window=24)
    model = yoco_jax.init(cfg, seed=3)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 40)).astype(np.int32)
    lengths = np.asarray([40, 27], np.int32)
    return model, tokens, lengths, _prefill(model, tokens, lengths, 40)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_chunked_prefill_equals_one_chunk(one_chunk, impl):
    """Chunks of 20 (> 16 queries: the chunk-vs-cache path) into a 45-slot cache."""
    model, tokens, lengths, (want_logits, want_cache) = one_chunk
    pallas_options = dict(kernel_backend="gpu", kernel_interpret=True)
    logits, cache = _prefill(
        model.replace(attention_impl=impl, **pallas_options), tokens, lengths, 20
    )
    assert _rel(logits, want_logits) < 1e-5
    np.testing.assert_array_equal(cache.lengths, want_cache.lengths)
    for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(want_cache)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
