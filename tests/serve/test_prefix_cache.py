"""The server's automatic prefix cache is exact: a random workload of prompts sharing prefixes
(ending at a prefill-chunk boundary, mid-chunk, inside the sliding window, the whole prompt),
sent together, gives the tokens and log-probs of a cold engine (no prefix cache), with and
without eviction under a tiny budget; hits are counted in the results."""

import functools

import numpy as np
import pytest

import yoco_jax
from yoco_jax.model import init_cache
from yoco_jax.model.cache import tree_bytes
from yoco_jax.serve.engine import Engine, Request

CHUNK, MAX_LEN = 16, 128


@functools.cache
def model(name):
    return yoco_jax.init(yoco_jax.get_config(name, dtype="float32", vocab_size=512), seed=2)


def workload(seed=0):
    """Prompts around one 50-token document: prefixes of 16 (a chunk boundary), 23 (mid-chunk,
    window 16 reaching back past a boundary), 40, the whole document, and longer prompts."""
    rng = np.random.default_rng(seed)
    doc = rng.integers(4, 512, 50).tolist()
    tail = lambda n: rng.integers(4, 512, n).tolist()
    prompts = [
        doc,
        doc[:16] + tail(5),
        doc[:23] + tail(9),
        doc[:40] + tail(1),
        doc,
        doc + tail(7),
        doc[:23],
        tail(12),
        doc[:16] + tail(30),
    ]
    return [
        Request(p, 6, temperature=0.7 * (i % 2), seed=i, logprobs=2) for i, p in enumerate(prompts)
    ]


def run(engine, requests):
    results = {}
    for i, req in enumerate(requests):
        req.on_event = lambda kind, data, i=i: results.__setitem__(i, (kind, data))
        engine.submit(req)
    engine.run_until_idle()
    assert all(results[i][0] == "done" for i in range(len(requests))), results
    return [results[i][1] for i in range(len(requests))]


@pytest.mark.parametrize("name", ["yoco-tiny", "yoco-swa-tiny"])
@pytest.mark.parametrize("budget", [1 << 24, "one entry"])
def test_warm_equals_cold(name, budget):
    m = model(name)
    make = lambda size: Engine(
        m, None, slots=3, max_len=MAX_LEN, prefill_chunk=CHUNK, block=3, prefix_cache_bytes=size
    )
    cold = run(make(0), workload())
    if budget == "one entry":  # about one 50-token entry: every store evicts
        budget = tree_bytes(init_cache(m.config, 1, 50)) + 4 * m.config.vocab_size
    engine = make(budget)
    warm = run(engine, workload())
    for c, w in zip(cold, warm):
        assert w.tokens == c.tokens
        np.testing.assert_allclose(w.token_logprobs, c.token_logprobs, atol=1e-5)
        for a, b in zip(w.top_logprobs, c.top_logprobs):
            assert [t for t, _ in a] == [t for t, _ in b]
    cache = engine.prefix_cache
    assert cache.hits > 0 and sum(w.cached_tokens for w in warm) == cache.hit_tokens
    assert cache.bytes <= cache.budget
    if budget < 1 << 24:
        assert cache.evictions > 0
    else:  # the whole document is a hit for its second copy
        assert warm[4].cached_tokens == 50 and warm[5].cached_tokens == 50


def test_lookup_takes_the_longest_stored_prefix_and_copies():
    m = model("yoco-tiny")
    engine = Engine(
        m, None, slots=1, max_len=MAX_LEN, prefill_chunk=CHUNK, prefix_cache_bytes=1 << 24
    )
    prompt = list(range(4, 44))
    run(engine, [Request(prompt, 1)])
    cache = engine.prefix_cache
    # Stored at the chunk boundaries 16, 32 and at the prompt's end, 40.
    assert sorted(len(k) for k in cache._entries) == [16, 32, 40]
    p, row, logits = cache.lookup(prompt[:35] + [7, 7])
    assert p == 32 and row.max_len == 32 and int(row.lengths[0]) == 32
    assert cache.lookup([9] * 20) is None
