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
from yoco_jax.inference.chunked_prefill import extend_chunk
from yoco_jax.inference.decode_loop import decode_loop, insert_row
from yoco_jax.serve.engine import Engine, QueueFull, Request
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
    budgets = [
        int(rng.integers(1, MAX_LEN - n + 1)) if n > 80 else int(rng.integers(1, 12))
        for n in lengths
    ]
    temps = [0.0 if i % 2 == 0 else 0.9 for i in range(16)]  # neighbours of both kinds
    engine = Engine(model, tok, slots=5, max_len=MAX_LEN, prefill_chunk=CHUNK, block=3)
    reqs = [
        Request(p, b, t, seed=100 + i) for i, (p, b, t) in enumerate(zip(prompts, budgets, temps))
    ]
    results = run(engine, reqs)
    for i, (p, b, t, res) in enumerate(zip(prompts, budgets, temps, results)):
        alone = generate(
            model,
            p,
            b,
            temperature=t,
            seed=100 + i,
            tokenizer=tok,
            prefill_chunk=CHUNK,
            max_len=MAX_LEN,
        )
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
    fns = (extend_chunk, insert_row, decode_loop)
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
    on = lambda i: lambda kind, data: events.append((i, kind, data))
    reqs = [Request([5, 6, 7], 8, on_event=on(i)) for i in range(4)]
    for req in reqs[:3]:  # the free slot's request, then --queue-limit 2 waiting
        engine.submit(req)
    with pytest.raises(QueueFull):
        engine.submit(reqs[3])
    engine.cancel(reqs[0])
    engine.run_until_idle()
    # The cancelled one ends with exactly one final event and nothing else; the others ran.
    assert [(i, k) for i, k, _ in events if i == 0] == [(0, "cancelled")]
    assert not [e for e in events if e[0] == 3]
    for i in (1, 2):
        mine = [e for e in events if e[0] == i]
        (_, last, result), deltas = mine[-1], mine[:-1]
        assert last == "done" and len(result.tokens) == 8 and result.finish_reason == "length"
        # Without a tokenizer the deltas carry the new ids (and empty text).
        assert sum((d[1] for _, k, d in deltas), []) == result.tokens and result.text == ""
    with pytest.raises(ValueError, match="max-len"):
        engine.submit(Request([5] * 90, 8))  # 90 + 8 - 1 = 97 positions > 96
    with pytest.raises(ValueError, match="empty"):
        engine.submit(Request([], 7))


def test_the_length_boundary_is_generates():
    """90 prompt tokens + 7 new ones need 96 positions (the last token is never fed): both
    `generate` and the server take it at max_len 96, with the same tokens."""
    model = tiny()
    engine = Engine(model, None, slots=2, max_len=MAX_LEN, prefill_chunk=CHUNK, block=3)
    prompt = list(range(5, 95))
    (res,) = run(engine, [Request(prompt, 7)])
    alone = generate(model, prompt, 7, prefill_chunk=CHUNK, max_len=MAX_LEN)
    assert res.tokens == alone.tokens and len(res.tokens) == 7


@pytest.mark.parametrize("block", [1, 3, 5, 8])
def test_stop_string_ids_and_usage_equal_generate(block):
    """A stop string hit in the middle of a decode block: the server's ids and their count
    stop where the text stops, exactly as `generate`'s (whatever the block)."""
    model, tok = tiny(), demo_tokenizer()
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 2048, n).tolist() for n in (9, 20, 33)]
    reqs, expected = [], []
    for i, p in enumerate(prompts):
        free = generate(model, p, 24, tokenizer=tok, prefill_chunk=CHUNK, max_len=MAX_LEN)
        text = free.text
        stop = text[len(text) // 2 : len(text) // 2 + 2]  # somewhere mid-completion
        assert stop.strip() and stop in text, text
        expected.append(
            generate(model, p, 24, stop=[stop], tokenizer=tok, prefill_chunk=CHUNK, max_len=MAX_LEN)
        )
        assert expected[-1].finish_reason == "stop"
        assert len(expected[-1].tokens) < len(free.tokens)
        reqs.append(Request(p, 24, stop=(stop,), seed=i))
    engine = Engine(model, tok, slots=2, max_len=MAX_LEN, prefill_chunk=CHUNK, block=block)
    for res, want in zip(run(engine, reqs), expected):
        assert res.tokens == want.tokens and res.text == want.text
        assert res.completion_tokens == len(want.tokens) and res.finish_reason == "stop"


def test_close_without_drain_cancels_everything_with_one_final_event():
    """A request mid-prefill, live ones and waiting ones: each ends with exactly one final
    event, "cancelled", and none finishes "done"."""
    model = tiny()
    engine = Engine(model, None, slots=2, max_len=MAX_LEN, prefill_chunk=16, block=2)
    events: dict[int, list[str]] = {}
    on = lambda i: lambda kind, data: events.setdefault(i, []).append(kind)
    # live, mid-prefill (5 chunks of 16), waiting
    reqs = [Request(list(range(5, 5 + n)), 12, on_event=on(i)) for i, n in enumerate((4, 80, 6))]
    engine.submit(reqs[0])
    engine.step()  # the first prefills alone and goes live
    engine.step()
    engine.submit(reqs[1])
    engine.submit(reqs[2])
    engine.step()  # one decode block plus the first chunk of the long prompt
    assert engine._pending is not None and engine._pending[1] is reqs[1]
    assert engine._live and reqs[0] in engine._live.values()
    engine.close(drain=False)  # no thread: the caller steps the engine to the end
    engine.run_until_idle()
    finals = {i: [k for k in kinds if k != "delta"] for i, kinds in events.items()}
    assert finals == {0: ["cancelled"], 1: ["cancelled"], 2: ["cancelled"]}, events


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


def test_serving_over_a_tensor_mesh_equals_one_device():
    """--mesh tensor=2: the parameters split over two devices, the same tokens (greedy and
    sampled) as one device; a data or context split is refused with the fix."""
    import jax

    from yoco_jax import sharding

    model = tiny()
    rng = np.random.default_rng(4)
    prompts = [rng.integers(3, 2048, n).tolist() for n in (3, 40, 17)]
    make = lambda mesh: [Request(p, 5, 0.9 * (i % 2), seed=i) for i, p in enumerate(prompts)]
    one = run(Engine(model, None, slots=2, max_len=MAX_LEN, prefill_chunk=CHUNK), make(None))
    mesh = sharding.make_mesh({"tensor": 2}, jax.devices()[:2])
    engine = Engine(model, None, slots=2, max_len=MAX_LEN, prefill_chunk=CHUNK, mesh=mesh)
    split = run(engine, make(mesh))
    assert [r.tokens for r in split] == [r.tokens for r in one]
    kv = engine.state.cache.kv.k
    assert len(kv.sharding.device_set) == 2
    with pytest.raises(ValueError, match="tensor axis only"):
        Engine(model, None, mesh=sharding.make_mesh({"data": 2}, jax.devices()[:2]))
