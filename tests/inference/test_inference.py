"""Inference: prefill, the jitted decode loop, sampling, bucketing, cache files, errors.

References are slow and obviously right: the full forward (`model.logits`) recomputed over the
whole sequence at every step, and a numpy top-k / top-p filter. Tests share shapes (4 prompts,
prefill chunks of 16, a 64-position cache, 6 new tokens) so the jitted functions compile few
times.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.inference import (
    Buckets,
    generate,
    load_cache,
    prefill,
    resize_cache,
    save_cache,
)
from yoco_jax.inference.chunked_prefill import extend_chunk
from yoco_jax.inference.decode_loop import decode_loop
from yoco_jax.inference.sampling import Sampling, filter_logits, row_keys, sample
from yoco_jax.model import init_cache
from yoco_jax.model.cache import cache_bytes, tree_bytes

# Awkward lengths: one token, within a retention chunk (16), across chunks and the SWA window (16).
PROMPT_LENGTHS = (1, 7, 23, 40)
NEW = 6
CHUNK = 16


@functools.cache
def build(name):
    return yoco_jax.init(name, seed=1)


@pytest.fixture(scope="module", params=["yoco-tiny", "yoco-swa-tiny", "transformer-tiny"])
def model(request):
    return build(request.param)


@pytest.fixture(scope="module")
def tiny():
    return build("yoco-tiny")


def random_prompts(vocab, lengths=PROMPT_LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, n).tolist() for n in lengths]


def reference_greedy(model, prompts, steps):
    """Argmax of the full forward over the whole sequence, recomputed at every step."""
    width = max(map(len, prompts)) + steps
    buf = np.zeros((len(prompts), width), np.int32)
    lengths = np.array([len(p) for p in prompts])
    for i, p in enumerate(prompts):
        buf[i, : len(p)] = p
    out = []
    for _ in range(steps):
        logits = np.asarray(model.logits(buf))  # causal: the padding after a row is ignored
        nxt = logits[np.arange(len(prompts)), lengths - 1].argmax(-1)
        buf[np.arange(len(prompts)), lengths] = nxt
        lengths = lengths + 1
        out.append(nxt)
    return np.stack(out, 1)


def test_greedy_matches_full_forward_mixed_lengths(model):
    prompts = random_prompts(model.config.vocab_size)
    outs = generate(model, prompts, max_new_tokens=NEW, prefill_chunk=CHUNK)
    got = np.array([o.tokens for o in outs])
    np.testing.assert_array_equal(got, reference_greedy(model, prompts, NEW))
    assert all(o.finish_reason == "length" and o.text is None for o in outs)


def test_prefill_logits_match_full_forward_and_one_shot(model):
    prompts = random_prompts(model.config.vocab_size)
    logits, cache = prefill(model, prompts, prefill_chunk=CHUNK)
    width = max(PROMPT_LENGTHS) + NEW  # the shape reference_greedy compiled
    full = np.asarray(model.logits([p + [0] * (width - len(p)) for p in prompts]))
    expected = full[np.arange(len(prompts)), np.array(PROMPT_LENGTHS) - 1]
    np.testing.assert_allclose(np.asarray(logits), expected, atol=2e-4, rtol=2e-4)
    np.testing.assert_array_equal(np.asarray(cache.lengths), PROMPT_LENGTHS)
    one_shot = prefill(model, prompts, prefill_chunk=64)
    for a, b in zip(jax.tree.leaves((logits, cache)), jax.tree.leaves(one_shot)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=2e-4)


def test_cache_bytes_equal_formula(model):
    cfg = model.config
    for dtype in ("float32", "bfloat16"):
        assert tree_bytes(init_cache(cfg, 3, 50, dtype)) == cache_bytes(cfg, 3, 50, dtype)


def test_save_load_then_continue_equals_no_save(model, tmp_path):
    document, question = random_prompts(model.config.vocab_size, (30, 5), seed=2)
    _, cache = prefill(model, [document], max_len=64, prefill_chunk=CHUNK)
    path = save_cache(tmp_path / "doc.npz", cache, model.config)
    loaded, _, cfg = load_cache(path, model.config)
    assert cfg == model.config
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(cache)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ask = lambda c: generate(model, [question], NEW, cache=c, prefill_chunk=CHUNK)[0].tokens
    answer = ask(loaded)
    assert ask(loaded) == answer  # the loaded cache is not consumed: ask again
    assert ask(cache) == answer  # no save
    assert generate(model, document + question, NEW, prefill_chunk=CHUNK).tokens == answer


def test_resize_cache_pads_kv_only(model):
    _, cache = prefill(model, random_prompts(model.config.vocab_size), prefill_chunk=CHUNK)
    grown = resize_cache(cache, 100)
    for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(grown)):
        if a.shape != b.shape:  # a K/V: [B, S, H, D] -> [B, 100, H, D], zeros after S
            assert b.shape == (a.shape[0], 100, *a.shape[2:])
            np.testing.assert_array_equal(np.asarray(b[:, : a.shape[1]]), np.asarray(a))
            assert not np.asarray(b[:, a.shape[1] :]).any()
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert tree_bytes(grown) == cache_bytes(model.config, 4, 100)


def test_buckets():
    ladder = Buckets(batch=(1, 4, 16), length=(100, 1000))
    assert [ladder.batch_size(n) for n in (1, 2, 4, 5, 17)] == [1, 4, 4, 16, 32]
    assert [ladder.seq_len(n) for n in (1, 100, 101, 1001)] == [100, 100, 1000, 1024]
    assert [Buckets().seq_len(n) for n in (1, 16, 17, 1000)] == [16, 16, 32, 1024]


def test_ladder_buckets_give_the_same_tokens(tiny):
    prompts = random_prompts(256)
    plain = generate(tiny, prompts, NEW, prefill_chunk=CHUNK)  # batch 4, cache 64
    ladder = Buckets(batch=(6,), length=(48,))  # batch 6, prompt width and cache 48
    assert generate(tiny, prompts, NEW, prefill_chunk=CHUNK, buckets=ladder) == plain


def test_decode_loop_compiles_once_and_streams(tiny):
    prompts = random_prompts(256)
    generate(tiny, prompts, NEW, prefill_chunk=CHUNK)
    loops, chunks = decode_loop._cache_size(), extend_chunk._cache_size()
    # Other prompts and lengths within the same buckets (cache 64, output 16), streamed in blocks.
    other = random_prompts(256, (3, 20, 30, 9), seed=4)
    streamed = []
    out = generate(tiny, other, 14, prefill_chunk=CHUNK, on_tokens=streamed.append, block=4)
    assert decode_loop._cache_size() == loops
    assert extend_chunk._cache_size() == chunks
    assert len(streamed) == 4  # 14 tokens in blocks of 4
    assert [sum((s[i] for s in streamed), []) for i in range(4)] == [o.tokens for o in out]
    np.testing.assert_array_equal([o.tokens for o in out], reference_greedy(tiny, other, 14))


def test_batch_equals_alone(tiny):
    prompts = random_prompts(256)
    batch = generate(tiny, prompts, NEW, prefill_chunk=CHUNK)
    for i in (0, 3):
        assert generate(tiny, prompts[i], NEW, prefill_chunk=CHUNK).tokens == batch[i].tokens


def test_sampling_seeded(tiny):
    prompts = random_prompts(256)
    run = lambda seed, **k: [
        o.tokens for o in generate(tiny, prompts, NEW, 1.5, seed=seed, prefill_chunk=CHUNK, **k)
    ]
    assert run(0) == run(0)
    assert run(0) != run(1)
    greedy = [o.tokens for o in generate(tiny, prompts, NEW, prefill_chunk=CHUNK)]
    assert run(7, top_k=1) == greedy
    assert run(7, top_p=1e-6) == greedy


def test_stop_tokens_end_rows_independently(tiny):
    prompts = random_prompts(256)
    free = generate(tiny, prompts, NEW, prefill_chunk=CHUNK)
    stop = free[1].tokens[2]  # row 1 stops at its third token, the others where they meet it
    stopped = generate(tiny, prompts, NEW, stop=[stop], prefill_chunk=CHUNK)
    for f, s in zip(free, stopped):
        cut = f.tokens.index(stop) if stop in f.tokens else None
        assert s.tokens == f.tokens[:cut]
        assert s.finish_reason == ("length" if cut is None else "stop")


def numpy_filter(logits, top_k, top_p):
    out = np.full_like(logits, -np.inf)
    for row, x in enumerate(logits):
        keep = np.argsort(-x, kind="stable")[: top_k or len(x)]
        p = np.exp(x[keep] - x[keep].max())
        p /= p.sum()
        n = 1
        while n < len(keep) and (top_p >= 1 or p[:n].sum() < top_p):
            n += 1
        out[row, keep[:n]] = x[keep[:n]]
    return out


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.5), (13, 0.9), (300, 0.3)])
def test_filter_logits_matches_numpy(top_k, top_p):
    logits = np.random.default_rng(top_k).normal(size=(3, 257)).astype(np.float32) * 3
    got = np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p))
    np.testing.assert_array_equal(got, numpy_filter(logits, top_k, top_p))


def test_samples_cover_exactly_the_top_k():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 50)), jnp.float32)
    allowed = np.argsort(-np.asarray(logits), axis=-1)[:, :4]
    steps = jnp.broadcast_to(jnp.arange(200)[:, None], (200, 2))
    draws = jax.vmap(lambda s: sample(logits, row_keys(0, 2), s, Sampling(2.0, 4, 1.0), False))
    draws = np.asarray(draws(steps))
    for row in range(2):
        assert set(draws[:, row]) == set(allowed[row])


def test_yoco_3b_cache_20x_smaller_at_1m():
    shapes = lambda name: jax.eval_shape(
        lambda: init_cache(yoco_jax.get_config(name, dtype="bfloat16"), 1, 2**20)
    )
    yoco, baseline = tree_bytes(shapes("yoco-3b")), tree_bytes(shapes("transformer-3b"))
    assert yoco * 20 <= baseline, (yoco, baseline)


@pytest.mark.parametrize("folder", ["official-gret-gqa", "official-swa"])
def test_official_greedy(folder, testdata):
    model = yoco_jax.load_pretrained(testdata / folder)
    expected = np.load(testdata / folder / "expected.npz")
    outs = generate(model, expected["prompt"].tolist(), max_new_tokens=8)
    np.testing.assert_array_equal(np.array([o.tokens for o in outs]), expected["greedy"])


def test_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        generate(tiny, [[1, 2], []])
    with pytest.raises(ValueError, match="vocabulary"):
        generate(tiny, [[1, 256]])
    with pytest.raises(ValueError, match="max_len"):
        generate(tiny, [[1] * 30], max_new_tokens=10, max_len=32)
    with pytest.raises(ValueError, match="tokenizer"):
        generate(tiny, "hello")
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny, [[1]], top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny, [[1]], max_new_tokens=0)
    with pytest.raises(FileNotFoundError, match="save_cache"):
        load_cache(tmp_path / "missing.npz")
    path = save_cache(tmp_path / "c.npz", init_cache(tiny.config, 1, 8), tiny.config)
    with pytest.raises(ValueError, match="another model"):
        load_cache(path, build("transformer-tiny").config)


# --- infer.py ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An exported folder (official layout + tokenizer.model) of a tiny random model with the
    demo tokenizer."""
    from yoco_jax.data import demo_tokenizer

    folder = tmp_path_factory.mktemp("ckpt") / "export"
    model = yoco_jax.init(yoco_jax.get_config("yoco-tiny", vocab_size=2048))
    model.tokenizer = demo_tokenizer()
    model.save_official(folder)
    return folder


def infer(argv, capsys):
    from yoco_jax.cli.infer import main

    main(argv)
    return capsys.readouterr()


def test_infer_streams_a_prompt(checkpoint, capsys):
    from yoco_jax.data import demo_tokenizer

    out = infer(["--checkpoint", str(checkpoint), "--prompt", "def f(x):", "--max-new-tokens",
                 "6"], capsys)  # fmt: skip
    model = yoco_jax.load_pretrained(checkpoint)
    expected = generate(model, "def f(x):", 6, tokenizer=demo_tokenizer())
    assert out.out == expected.text + "\n"
    assert "tokens/s" in out.err and "peak" in out.err


def test_infer_jsonl_batch(checkpoint, capsys, tmp_path):
    from yoco_jax.data import demo_tokenizer

    lines = [{"id": "a", "prompt": "import os"}, {"tokens": [5, 6, 7, 8, 9]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    files = ["--input-jsonl", str(tmp_path / "in.jsonl"), "--output-jsonl", str(tmp_path / "o")]
    infer(["--checkpoint", str(checkpoint), *files, "--max-new-tokens", "5"], capsys)
    results = [json.loads(x) for x in (tmp_path / "o").read_text().splitlines()]
    model = yoco_jax.load_pretrained(checkpoint)
    tok = demo_tokenizer()
    expected = generate(model, ["import os", [5, 6, 7, 8, 9]], 5, tokenizer=tok)
    assert [r["completion_tokens"] for r in results] == [e.tokens for e in expected]
    assert [r["completion"] for r in results] == [tok.decode(e.tokens) for e in expected]
    assert results[0]["id"] == "a" and results[1]["finish_reason"] == "length"
    assert results[1]["tokens"] == [5, 6, 7, 8, 9]  # the prompt is kept, not overwritten


@pytest.mark.parametrize(
    "args,message",
    [
        (["--checkpoint", "/nonexistent/run", "--prompt", "x"], "does not exist"),
        (["--prompt", ""], "empty"),
        (["--prompt", "word " * 40, "--max-len", "16"], "max_len"),
        (["--input-jsonl", "{tmp}/bad.jsonl"], "vocabulary"),
    ],
)
def test_infer_errors(checkpoint, capsys, tmp_path, args, message):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"tokens": [1, 5000]}) + "\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--checkpoint" not in args:
        args = ["--checkpoint", str(checkpoint)] + args
    with pytest.raises(SystemExit) as exit_info:
        infer(args, capsys)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_prefill_grows_a_short_continued_cache_to_max_len(model):
    """prefill(cache=16 positions, max_len=64) grows the cache (issue: it used to refuse);
    the logits are those of one prefill of both parts; without max_len it grows to a bucket."""
    first, second = random_prompts(model.config.vocab_size, (12, 9), seed=5)
    _, cache = prefill(model, [first], max_len=16, prefill_chunk=CHUNK)
    logits, grown = prefill(model, [second], cache=cache, max_len=64, prefill_chunk=CHUNK)
    assert grown.max_len == 64 and cache.max_len == 16
    want, _ = prefill(model, [first + second], max_len=64, prefill_chunk=CHUNK)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))
    _, bucketed = prefill(model, [second], cache=cache, prefill_chunk=CHUNK)
    assert bucketed.max_len == 32  # 21 tokens: the next bucket
