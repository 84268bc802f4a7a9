"""Context parallelism: the sequence split over the `context` mesh axis computes the same
logits, gradients and training losses as the unsplit model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from processes import finish, start_train

from yoco_jax import sharding
from yoco_jax.config import get_config
from yoco_jax.model import build_model, init_cache
from yoco_jax.ops import context_parallel
from yoco_jax.train.config import load_train_config
from yoco_jax.train.loop import train

pytestmark = pytest.mark.slow  # meshes of 8 CPU devices, multi-process runs: not in `-m "not slow"`

# chunk 4 with slices of 5 or 10 tokens: slice lengths that are not multiples of the chunk.
# yoco-tiny has GQA (4 query heads over 2 kv heads); the window (16) reaches back over 1-3
# slice boundaries.
CONFIGS = {
    "retention": get_config("yoco-tiny", n_layers=2, chunk_size=4, dtype="float32"),
    "window": get_config("yoco-swa-tiny", n_layers=2, chunk_size=4, dtype="float32"),
}
BATCH, LENGTH = 4, 40


def _inputs(config, batch=BATCH):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (batch, LENGTH)).astype(np.int32)
    weights = rng.normal(size=(batch, LENGTH, config.vocab_size)).astype(np.float32)
    return tokens, weights


def _logits_and_grads(config, mesh, batch=BATCH, jaxpr=False):
    """(logits, gradients of sum(logits * weights)) with parameters sharded by the rules; with
    `jaxpr`, also the forward's jaxpr as text (to count the kernels that ran)."""
    model = build_model(config)
    tokens, weights = _inputs(config, batch)
    init = lambda: model.init(jax.random.key(0), tokens[:, :8])
    with sharding.use_mesh(mesh):
        boxed = jax.eval_shape(init)
        params = jax.device_put(sharding.unbox(init()), sharding.logical_shardings(boxed, mesh))

        def loss(params):
            logits = model.apply(params, tokens)
            return jnp.sum(logits * weights), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        text = str(jax.make_jaxpr(loss)(params)) if jaxpr else None
    out = jax.device_get((logits, grads))
    return (out, text) if jaxpr else out


@pytest.fixture(scope="module")
def unsplit():
    """Per mixer: logits and gradients on one device."""
    one = sharding.make_mesh({}, devices=jax.devices()[:1])
    return {name: _logits_and_grads(config, one) for name, config in CONFIGS.items()}


def _same_model(got, want):
    """(logits, gradients) against the unsplit model's: every parameter has a gradient, and
    each array agrees as `_close` says."""
    (logits, grads), (want_logits, want_grads) = got, want
    _close(logits, want_logits)
    flat_want = jax.tree_util.tree_leaves_with_path(want_grads)
    flat_got = jax.tree_util.tree_leaves(grads)
    assert len(flat_got) == len(flat_want) > 20
    for (path, want), got in zip(flat_want, flat_got, strict=True):
        assert np.max(np.abs(want)) > 0, jax.tree_util.keystr(path)  # every parameter is used
        _close(got, want)


def _close(got, want):
    """float32 agreement to 1e-5 of each array's largest magnitude."""
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "mixer, axes",
    [
        ("retention", {"context": 8}),
        ("retention", {"fsdp": 2, "context": 4}),
        ("retention", {"data": 2, "context": 2, "tensor": 2}),
        ("window", {"context": 4, "tensor": 2}),  # window ctx 8 (3 hops): the prefill test
    ],
)
def test_logits_and_every_gradient_equal_the_unsplit_model(unsplit, mixer, axes):
    want_logits, want_grads = unsplit[mixer]
    logits, grads = _logits_and_grads(CONFIGS[mixer], sharding.make_mesh(axes))
    _same_model((logits, grads), (want_logits, want_grads))


def test_bfloat16_gradients_under_context_reduce_in_float32(unsplit):
    """A bf16 step under mesh.context used to abort XLA:CPU (a bf16 reduce-scatter of the K/V
    gradient); the gather's transpose now sums in float32. The bf16 gradients stay near the
    float32 unsplit ones."""
    config = get_config("yoco-tiny", n_layers=2, chunk_size=4, dtype="bfloat16")
    _, grads = _logits_and_grads(config, sharding.make_mesh({"context": 2, "data": 4}))
    _, want_grads = unsplit["retention"]
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads)):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, atol=0.05 * np.max(np.abs(want)))


def test_a_length_that_does_not_split_over_the_axis_is_refused():
    config = CONFIGS["retention"]
    model = build_model(config)
    tokens = np.zeros((2, 42), np.int32)
    with sharding.use_mesh(sharding.make_mesh({"context": 4, "data": 2})):
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens[:, :8]))
        with pytest.raises(ValueError, match="length 42 does not divide over the context axis"):
            jax.eval_shape(lambda p: model.apply(p, tokens), params)


def test_context_size_reads_the_mesh():
    assert sharding.tracing().context_size == 1
    with sharding.use_mesh(sharding.make_mesh({"context": 4, "data": -1})):
        assert sharding.tracing().context_size == 4


@pytest.mark.parametrize("n", [2, 8])
def test_balance_gives_device_i_the_half_slices_i_and_2n_minus_1_minus_i(n):
    """The zig-zag order of the cross-decoder (equal causal work per device), and back."""
    t = 4 * n  # half slices of 2
    x = np.arange(2 * t).reshape(2, t)
    mesh = sharding.make_mesh({"context": n, "data": -1})
    with sharding.use_mesh(mesh):
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "context"))
        zigzag = jax.jit(context_parallel.balance)(jax.device_put(x, split))
        back = jax.jit(context_parallel.unbalance)(zigzag)
    halves = np.split(x, 2 * n, axis=1)
    want = np.concatenate(
        [np.concatenate([halves[i], halves[2 * n - 1 - i]], 1) for i in range(n)], 1
    )
    np.testing.assert_array_equal(zigzag, want)
    np.testing.assert_array_equal(back, x)


# Prefill and decode ------------------------------------------------------------------------------

PROMPT_LENGTHS = np.array([40, 13, 27, 1])  # mixed lengths, right-padded to 40
CACHE_LENGTH, NEW_TOKENS = 48, 5


def _greedy(config, mesh, tokens):
    """Prefill the padded prompts, then greedy-decode: (tokens, last logits, K cache)."""
    model = build_model(config)
    params = model.init(jax.random.key(0), tokens[:, :8])
    extend = jax.jit(
        lambda p, t, c, n, fresh: model.apply(p, t, c, n, fresh, method="extend"),
        static_argnums=4,
    )
    with sharding.use_mesh(mesh):
        cache = init_cache(config, len(tokens), CACHE_LENGTH)
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "context"))
        cache = cache._replace(kv=jax.device_put(cache.kv, split))
        logits, cache = extend(params, tokens, cache, PROMPT_LENGTHS, True)
        out = []
        for _ in range(NEW_TOKENS):
            out.append(np.asarray(jnp.argmax(logits, axis=-1)))
            logits, cache = extend(params, out[-1][:, None], cache, np.ones(len(tokens)), False)
    return np.stack(out, axis=1), np.asarray(logits), cache.kv.k


@pytest.mark.parametrize("mixer, axes", [("retention", {"context": 4, "data": 2}),
                                         ("window", {"context": 8})])  # fmt: skip
def test_prefill_over_the_context_axis_then_decode_gives_the_unsplit_tokens(mixer, axes):
    config = CONFIGS[mixer]
    tokens = _inputs(config)[0]
    tokens = np.where(np.arange(LENGTH) < PROMPT_LENGTHS[:, None], tokens, 0)
    want_tokens, want_logits, _ = _greedy(config, sharding.make_mesh({}, jax.devices()[:1]), tokens)
    mesh = sharding.make_mesh(axes)
    got_tokens, got_logits, k_cache = _greedy(config, mesh, tokens)
    np.testing.assert_array_equal(got_tokens, want_tokens)
    _close(got_logits, want_logits)
    # The global cache stays split along its length: each device holds 1/context of it.
    assert k_cache.sharding.shard_shape(k_cache.shape)[1] == CACHE_LENGTH // axes["context"]


# train.py ---------------------------------------------------------------------------------------

RUN = ["model=yoco-tiny", "model.n_layers=2", "model.vocab_size=2048", "model.chunk_size=4",
       "seq_len=24", "batch_size=8", "learning_rate=1e-2", "warmup_steps=1", "log_every=1",
       "progress=false", "data.shuffle_window=8", "data.eval_fraction=0", "loss_chunk=5",
       "checkpoint_every=2", "async_checkpointing=false"]  # fmt: skip


def _losses_of(output_dir):
    records = (output_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, records) if "loss" in r}


def _run(output_dir, steps, context):
    overrides = [f"output_dir={output_dir}", f"steps={steps}", f"mesh.context={context}"]
    train(load_train_config(None, RUN + overrides))
    return _losses_of(output_dir)


def test_train_with_context_4_then_resumed_with_context_2_matches_context_1(tmp_path):
    """Same losses as the unsplit run; a checkpoint written under one context size restores
    under another."""
    want = _run(tmp_path / "unsplit", 4, 1)
    split = tmp_path / "split"
    first = _run(split, 2, 4)
    got = {**first, **_run(split, 4, 2)}
    assert sorted(first) == [1, 2] and sorted(got) == sorted(want) == [1, 2, 3, 4]
    assert want[4] < want[1]
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)],
                               rtol=2e-5)  # fmt: skip


# Two processes ----------------------------------------------------------------------------------


def _start_processes(output_dir, processes, context, cache, corpus, model):
    """train.py on 4 devices in all, in `processes` processes (gloo collectives)."""
    run = [f"model={model}" if arg.startswith("model=") else arg for arg in RUN]
    args = [*run, "steps=3", "data_shards=2", f"data.path={corpus}", f"output_dir={output_dir}",
            f"mesh.context={context}"]  # fmt: skip
    return start_train(args, processes, cache)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["yoco-tiny", "yoco-swa-tiny"])  # window 16 over slices of 6
def test_context_spanning_two_processes_matches_one_process(tmp_path, model):
    """Retention's state scan, and the window halo's ppermute, across processes."""
    cache, corpus = tmp_path / "compile_cache", tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * (i % 5 + 1))
    one = _start_processes(tmp_path / "one", 1, 1, cache, corpus, model)  # overlaps the next
    output = finish(_start_processes(tmp_path / "two", 2, 4, cache, corpus, model))
    assert "2 process(es)" in output and "'context': 4" in output
    finish(one)
    read = lambda name: _losses_of(tmp_path / name)
    want, got = read("one"), read("two")
    assert sorted(got) == sorted(want) == [1, 2, 3]
    np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=2e-5)
