"""The serving engine without HTTP: slots, insert/evict, mixed sampling, compilations, text.

References: `generate` for each prompt alone (itself tested against the full forward in
test_inference.py), `tokenizer.decode` + `str.find` for the released text.
"""

import functools

import numpy as np
import pytest

import yoco_jax
from yoco_jax.data import demo_tokenizer
from yoco_jax.inference import generate
from yoco_jax.inference.chunked_prefill import _prefill_chunk
from yoco_jax.serve.engine import Engine, QueueFull, Request
from yoco_jax.serve.step import decode_block, insert_row
from yoco_jax.serve.text import TextStream

CHUNK, MAX_LEN = 32, 96  # rungs 16, 32, 64, 96


@functools.cache
def tiny():
    return yoco_jax.init(yoco_jax.get_config("yoco-tiny", dtype="float32", vocab_size=2048), 1)


def run(engine, requests):
    """Submits all, steps the engine on this thread until idle; returns each Result."""
    results = {}
    for i, req in enumerate(requests):
        req.on_event = lambda kind, data, i=i: results.__setitem__(i, (kind, data))
        engine.submit(req)
    engine.run_until_idle()
    assert all(results[i][0] == "done" for i in range(len(requests))), results
    return [results[i][1] for i in range(len(requests))]


def test_mixed_greedy_and_sampled_rows_match_generate_alone():
    model, tok = tiny(), demo_tokenizer()
    rng = np.random.default_rng(0)
    # Awkward lengths: 1 token, within a rung, across chunks (32) and rungs, the top rung (96).
    lengths = [1, 7, 16, 17, 33, 40, 64, 65, 80, 3, 29, 50, 90, 12, 5, 70]
    prompts = [rng.integers(3, 2048, n).tolist() for n in lengths]
    budgets = [int(rng.integers(1, MAX_LEN - n + 1)) if n > 80 else int(rng.integers(1, 12))
               for n in lengths]  # fmt: skip
    temps = [0.0 if i % 2 == 0 else 0.9 for i in range(16)]  # neighbours of both kinds
    engine = Engine(model, tok, slots=5, max_len=MAX_LEN, prefill_chunk=CHUNK, block=3)
    reqs = [
        Request(p, b, t, seed=100 + i) for i, (p, b, t) in enumerate(zip(prompts, budgets, temps))
    ]
    results = run(engine, reqs)
    for i, (p, b, t, res) in enumerate(zip(prompts, budgets, temps, results)):
        alone = generate(model, p, b, temperature=t, seed=100 + i, tokenizer=tok,
                         prefill_chunk=CHUNK, max_len=MAX_LEN)  # fmt: skip
        assert res.tokens == alone.tokens, (i, len(p), t)
        assert (res.text, res.finish_reason) == (alone.text, alone.finish_reason)
        assert res.prompt_tokens == len(p) and res.completion_tokens == len(alone.tokens)
    assert engine.load() == (0, 0) and sorted(engine._free) == list(range(5))


def test_compilations_are_bounded_over_50_requests():
    model = tiny()
    engine = Engine(model, None, slots=3, max_len=MAX_LEN, prefill_chunk=CHUNK, block=4)
    # Hand count for rungs 16, 32, 64, 96 and chunk 32: prefill chunks (16, fresh), (32, fresh),
    # then (32, fresh) + (32, not fresh) for each of 64 and 96; one insert per rung; one block.
    assert engine.compile_plan() == {"prefill": 6, "insert": 4, "decode": 1}
    fns = (_prefill_chunk, insert_row, decode_block)
    before = [f._cache_size() for f in fns]
    rng = np.random.default_rng(1)

    def wave():
        reqs = []
        for _ in range(50):
            prompt = rng.integers(3, 2048, int(rng.integers(1, MAX_LEN - 8))).tolist()
            temperature = float(rng.choice([0.0, 1.0]))
            reqs.append(Request(prompt, int(rng.integers(1, 9)), temperature, seed=7))
        run(engine, reqs)

    wave()
    after = [f._cache_size() for f in fns]
    growth = [a - b for a, b in zip(after, before)]
    assert growth[0] <= 6 and growth[1] <= 4 and growth[2] <= 1, growth
    wave()  # other lengths, other budgets, other sampling: nothing new
    assert [f._cache_size() for f in fns] == after


def test_queue_limit_and_cancel():
    engine = Engine(tiny(), None, slots=1, max_len=MAX_LEN, prefill_chunk=CHUNK, queue_limit=2)
    events = []
    reqs = [Request([5, 6, 7], 8, on_event=lambda k, d, i=i: events.append((i, k, d)))
            for i in range(3)]  # fmt: skip
    engine.submit(reqs[0])
    engine.submit(reqs[1])
    with pytest.raises(QueueFull):
        engine.submit(reqs[2])
    engine.cancel(reqs[0])
    engine.run_until_idle()
    assert {i for i, _, _ in events} == {1}  # only the second ran; the cancelled one is silent
    (_, last, result), deltas = events[-1], events[:-1]
    assert last == "done" and len(result.tokens) == 8 and result.finish_reason == "length"
    # Without a tokenizer the deltas carry the new ids (and empty text).
    assert sum((d[1] for _, k, d in deltas), []) == result.tokens and result.text == ""
    with pytest.raises(ValueError, match="max-len"):
        engine.submit(Request([5] * 90, 7))
    with pytest.raises(ValueError, match="empty"):
        engine.submit(Request([], 7))


@pytest.mark.parametrize("stop", [(), ("(self",), ("zzz", "\n    "), (" ",)])
def test_text_stream_released_pieces_equal_the_cut_text(stop):
    tok = demo_tokenizer()
    text = "def forward(self, x):\n    return self.proj(x) + 1\n"
    tokens = tok.encode(text)
    full = tok.decode(tokens)
    hits = [full.find(s) for s in stop if s in full]
    expected = full[: min(hits)] if hits else full
    stream, pieces = TextStream(tok, stop), []
    for n in range(1, len(tokens) + 1):
        delta, hit = stream.update(tokens[:n], final=n == len(tokens))
        pieces.append(delta)
        assert not any(s in "".join(pieces) for s in stop)  # never a stop string released
        if hit:
            break
    assert "".join(pieces) == expected == stream.shown
    assert hit == bool(hits)
