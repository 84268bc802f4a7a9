"""Inference over a context mesh (issue 11): `generate` and `prefill` with `mesh=` split the
prompts along their length over `context` (rows over `data`), keep the K/V cache split along
its length while decoding, and give the tokens and logits of the unsplit model."""

import json

import jax
import numpy as np
import pytest

import yoco_jax
from yoco_jax import sharding
from yoco_jax.cli.infer import main as infer_main
from yoco_jax.inference.chunked_prefill import prefill_tokens
from yoco_jax.inference.plan import Buckets, plan

LENGTHS = (40, 13, 27, 1)  # mixed lengths in one batch, right-padded
NEW = 6


def _model(name):
    config = yoco_jax.get_config(name, n_layers=2, chunk_size=4, dtype="float32")
    return yoco_jax.init(config, seed=3)


@pytest.fixture(scope="module")
def models():
    """yoco-tiny (retention, GQA 4 over 2) and yoco-swa-tiny (window 16: it crosses slices)."""
    return {"retention": _model("yoco-tiny"), "window": _model("yoco-swa-tiny")}


def _prompts(model, lengths=LENGTHS):
    rng = np.random.default_rng(0)
    return [rng.integers(3, model.config.vocab_size, n).tolist() for n in lengths]


def _mesh(axes):
    """A mesh over as many of the 8 devices as the axes use."""
    return sharding.make_mesh(axes, jax.devices()[: int(np.prod(list(axes.values())))])


def _tokens(completions):
    return [c.tokens for c in completions]


@pytest.fixture(scope="module")
def unsplit(models):
    """Per mixer: the greedy tokens of the prompts without a mesh (the reference)."""
    return {name: _tokens(m.generate(_prompts(m), NEW)) for name, m in models.items()}


@pytest.mark.parametrize(
    "mixer, axes",
    [("retention", {"data": 2, "context": 4}), ("window", {"context": 8})],  # window: 2 hops
)
def test_generate_over_a_context_mesh_gives_the_unsplit_tokens(models, unsplit, mixer, axes):
    model = models[mixer]
    got = _tokens(model.generate(_prompts(model), NEW, mesh=_mesh(axes)))
    assert got == unsplit[mixer] and all(len(t) == NEW for t in got)


def test_chunked_prefill_and_sampling_over_a_context_mesh(models):
    """Prefill chunks of 12 (3 tokens per device, not a multiple of the retention chunk 4): the
    state crosses chunks and devices; sampled decoding draws the same tokens."""
    model = models["retention"]
    prompts = _prompts(model)
    options = dict(temperature=0.9, top_k=40, seed=7)
    want = _tokens(model.generate(prompts, NEW, **options))
    mesh = _mesh({"data": 2, "context": 4})
    assert _tokens(model.generate(prompts, NEW, prefill_chunk=12, mesh=mesh, **options)) == want


def test_prefill_logits_match_and_the_cache_is_split_along_its_length(models, unsplit):
    model = models["retention"]
    prompts = _prompts(model)
    want_logits, want_cache = model.prefill(prompts, max_len=64)
    mesh = _mesh({"data": 2, "context": 4})
    logits, cache = model.prefill(prompts, max_len=64, mesh=mesh)
    scale = np.max(np.abs(want_logits))
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(cache.kv.k, want_cache.kv.k, rtol=1e-5, atol=1e-5)
    # Each device holds 2 of the 4 rows and 64 / 4 of the positions: a quarter of the K/V
    # bytes of a row (the cache is never whole on one device).
    for k in (cache.kv.k, cache.kv.v):
        assert k.shape[:2] == (4, 64)
        assert k.sharding.shard_shape(k.shape)[:2] == (2, 16)
        assert {s.data.shape[:2] for s in k.addressable_shards} == {(2, 16)}
    # Decoding finds the mesh on the cache and keeps it split (the shapes generate compiled).
    state = model.decode(yoco_jax.inference.start_decode(logits, cache, NEW, buffer=16))
    got = [row[:NEW].tolist() for row in np.asarray(state.tokens)]
    assert got == unsplit["retention"]
    assert state.cache.kv.k.sharding.shard_shape(state.cache.kv.k.shape)[:2] == (2, 16)


def test_the_plan_rounds_chunk_width_and_cache_to_the_context_size():
    shape = plan([40, 13], 7, buckets=Buckets(), prefill_chunk=10, max_len=50, multiple=4)
    assert (shape.width, shape.chunk, shape.max_len) == (72, 12, 52)
    # A continued cache grows to a multiple too.
    assert plan([5], 30, buckets=Buckets(), prefill_chunk=8, used=[20], multiple=3).max_len == 66


def test_what_does_not_split_over_the_mesh_is_refused(models):
    model, window = models["retention"], models["window"]
    mesh = _mesh({"data": 2, "context": 4})
    tokens, lengths = np.ones((2, 40), np.int32), np.array([40, 3])
    cases = [
        (lambda: prefill_tokens(model, tokens[:, :30], lengths, mesh=mesh), "prompt width 30"),
        (lambda: prefill_tokens(model, tokens, lengths, max_len=50, mesh=mesh),
         "cache length (max_len) 50 does not split over the context axis of size 4"),
        (lambda: prefill_tokens(model, tokens, lengths, prefill_chunk=6, mesh=mesh),
         "prefill chunk 6"),
        (lambda: model.prefill(_prompts(model, (5, 6, 7)), mesh=mesh),
         "the number of prompts (cache rows)=3 does not divide"),
        (lambda: window.generate(_prompts(window), 2, prefill_chunk=16, mesh=mesh),
         "pass a prefill chunk >= the prompt width 64"),
        (lambda: model.generate([[5]], 2, mesh=jax.make_mesh((8,), ("context",))),
         "build it with yoco_jax.sharding.make_mesh"),
    ]  # fmt: skip
    for call, words in cases:
        with pytest.raises(ValueError) as error:
            call()
        assert words in str(error.value) and "\n" not in str(error.value)
    config = yoco_jax.get_config("transformer-tiny", n_layers=2)
    baseline = yoco_jax.Model(config, jax.eval_shape(lambda: yoco_jax.init(config).params))
    with pytest.raises(ValueError, match="no context-parallel attention"):
        baseline.generate([[5, 6]], 2, mesh=mesh)


def test_infer_cli_mesh_flag(models, tmp_path, capsys):
    model = models["retention"]
    folder = model.save_official(tmp_path / "model")
    prompts = _prompts(model)
    lines = [json.dumps({"tokens": p}) for p in prompts]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["--checkpoint", folder, "--input-jsonl", tmp_path / "in.jsonl", "--max-new-tokens",
            NEW, "--dtype", "float32", "--mesh"]  # fmt: skip
    # A mesh smaller than the machine (3 of the 8 devices) runs and says which mesh it used.
    for mesh, used in [
        (["context=4", "data=2"], "mesh: data=2 fsdp=1 context=4 tensor=1 on 8 of the 8 devices"),
        (["context=3"], "mesh: data=1 fsdp=1 context=3 tensor=1 on 3 of the 8 devices"),
    ]:
        infer_main([str(a) for a in argv + mesh])
        out, err = capsys.readouterr()
        got = [json.loads(line)["completion_tokens"] for line in out.splitlines()]
        assert got == _tokens(model.generate(prompts, NEW)) and used in err
    with pytest.raises(SystemExit) as exit_:
        infer_main(["--checkpoint", str(folder), "--prompt", "x", "--mesh", "context=3.5"])
    assert exit_.value.code == 2
    assert "--mesh context=3.5: the size must be an integer" in capsys.readouterr().err


def test_prefill_grows_a_short_continued_cache_over_a_mesh(models):
    """An 18-position cache (not a multiple of context 4) continued with max_len=64: prefill
    grows and rounds it as documented, and the logits equal the unsplit prefill of the whole."""
    model = models["retention"]
    first, second = _prompts(model, (14, 14))
    mesh = _mesh({"context": 4})
    _, cache = model.prefill([first], max_len=18)
    logits, grown = model.prefill([second], cache=cache, max_len=64, mesh=mesh)
    assert grown.max_len == 64 and cache.max_len == 18  # the caller's cache is untouched
    want, _ = model.prefill([first + second], max_len=64)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))
