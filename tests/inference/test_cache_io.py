"""Cache files across dtypes and weights (issue 15): a bfloat16 model's cache serves a float32
model on the XLA and the Pallas paths, and a cache is refused by weights that did not make it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.inference import decode, load_cache, prefill, save_cache
from yoco_jax.inference.decode_loop import start_decode
from yoco_jax.model import init_cache

DOC, QUESTION = 21, 5  # the question (<= 16 tokens) runs the Pallas decode kernel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A float32 model, a document's cache prefilled by its bfloat16 twin and saved, the tokens."""
    cfg = yoco_jax.get_config("yoco-tiny", n_layers=2, attention_impl="xla")
    model = yoco_jax.init(cfg, seed=2)
    rng = np.random.default_rng(0)
    doc, question = rng.integers(3, cfg.vocab_size, DOC), rng.integers(3, cfg.vocab_size, QUESTION)
    _, cache = prefill(model.replace(dtype="bfloat16"), [doc.tolist()], max_len=32)
    assert cache.kv.k.dtype == jnp.bfloat16
    path = save_cache(tmp_path_factory.mktemp("c") / "doc.npz", cache, cfg, params=model.params)
    return model, path, cache, doc, question


def ask(model, cache, question):
    """(logits after the question, logits after one more greedy token, that token)."""
    cache = jax.tree.map(jnp.copy, cache)  # prefill and decode consume (donate) the cache
    logits, cache = prefill(model, [question.tolist()], cache=cache)
    first = np.asarray(logits[0])
    state = decode(model, start_decode(logits, cache, 2), steps=1)
    return first, np.asarray(state.logits[0]), int(state.tokens[0, 0])


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_bfloat16_cache_serves_a_float32_model_on_both_paths(saved):
    model, path, bf16_cache, doc, question = saved
    loaded, _, _ = load_cache(path, model.config, params=model.params)
    assert loaded.kv.k.dtype == jnp.float32  # the model's own cache dtype
    xla = ask(model, loaded, question)
    pallas_model = model.replace(
        attention_impl="pallas", kernel_backend="gpu", kernel_interpret=True
    )
    pallas = ask(pallas_model, loaded, question)
    # Without the cast on load, the kernel reads the bfloat16 cache directly.
    raw = ask(pallas_model, bf16_cache, question)
    assert pallas[2] == xla[2]
    assert rel(pallas[0], xla[0]) < 1e-5 and rel(pallas[1], xla[1]) < 1e-5
    # Against the float32 full forward (the document's K/V went through bfloat16 once).
    full = np.asarray(model.logits(np.concatenate([doc, question, [xla[2]]])[None]))[0]
    for got in (xla, raw):
        assert rel(got[0], full[DOC + QUESTION - 1]) < 3e-2
        assert rel(got[1], full[DOC + QUESTION]) < 3e-2


def test_a_cache_is_refused_by_other_weights(saved, tmp_path):
    model, path, _, _, _ = saved
    load_cache(path, model.config, params=model.params)
    bf16_params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), model.params)
    load_cache(path, model.config, params=bf16_params)  # the same weights, stored in bfloat16
    other = yoco_jax.init(model.config, seed=3)
    with pytest.raises(ValueError, match="prefilled by other weights"):
        load_cache(path, model.config, params=other.params)
    nudged = jax.tree.map(lambda p: p, model.params)
    nudged["output_projection"]["kernel"] = nudged["output_projection"]["kernel"].at[-1, 0].add(1)
    with pytest.raises(ValueError, match="prefilled by other weights"):
        load_cache(path, model.config, params=nudged)
    unsigned = save_cache(tmp_path / "u.npz", init_cache(model.config, 1, 8), model.config)
    with pytest.raises(ValueError, match="without a fingerprint"):
        load_cache(unsigned, model.config, params=model.params)
    load_cache(unsigned, model.config)  # no params given: only the config is checked
