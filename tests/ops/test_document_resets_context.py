"""Packed documents over the context axis: the cross-device retention scan, the window halo, the
gathered and ring cross-attention and the zig-zag layout all honour the segment ids, so the
split model computes what the unsplit one does (which is each document alone:
tests/model/test_document_resets.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_context_parallel import RUN, _losses_of

import yoco_jax
from yoco_jax import sharding
from yoco_jax.config import get_config
from yoco_jax.model import build_model
from yoco_jax.train.config import load_train_config
from yoco_jax.train.loop import train

pytestmark = pytest.mark.slow  # meshes of 8 CPU devices: not in `-m "not slow"`

CONFIGS = {
    "retention": get_config("yoco-tiny", n_layers=2, chunk_size=4, dtype="float32"),
    "window": get_config(
        "yoco-swa-tiny", n_layers=2, chunk_size=4, sliding_window=8, dtype="float32"
    ),
    "transformer": get_config("transformer-tiny", n_layers=2, dtype="float32"),
}
# 48 tokens: slices of 24, 12 or 6 (not multiples of the chunk, 4, at 6), boundaries on and off
# slice edges, a one-token document at a slice start, padding at the end.
LENGTHS = [[6, 1, 11, 6, 20], [12, 12, 1, 13], [48], [3, 5, 9, 17, 7]]
LENGTH = 48


def _inputs(config):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (len(LENGTHS), LENGTH)).astype(np.int32)
    weights = rng.normal(size=(*tokens.shape, config.vocab_size)).astype(np.float32)
    seg = np.zeros(tokens.shape, np.int32)
    for row, pieces in enumerate(LENGTHS):
        ends = np.cumsum(pieces)
        for i, (start, end) in enumerate(zip(ends - pieces, ends, strict=True)):
            seg[row, start:end] = i + 1
    return tokens, weights * (seg > 0)[..., None], seg


def _logits_and_grads(config, mesh):
    model = build_model(config)
    tokens, weights, seg = _inputs(config)
    init = lambda: model.init(jax.random.key(0), tokens[:, :8])
    with sharding.use_mesh(mesh):
        boxed = jax.eval_shape(init)
        params = jax.device_put(sharding.unbox(init()), sharding.logical_shardings(boxed, mesh))

        def loss(params):
            logits = model.apply(params, tokens, segment_ids=seg)
            return jnp.sum(logits * weights), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return jax.device_get((logits, grads))


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


@pytest.mark.parametrize(
    "mixer, axes, mode",
    [
        ("retention", {"data": 4, "context": 2}, "gather"),
        ("retention", {"fsdp": 2, "context": 4}, "ring"),
        ("retention", {"context": 8}, "gather"),
        ("window", {"context": 4, "tensor": 2}, "ring"),
        ("window", {"context": 8}, "gather"),
        ("transformer", {"data": 2, "context": 4}, "gather"),
    ],
)
def test_packed_logits_and_every_gradient_equal_the_unsplit_model(mixer, axes, mode):
    config = dataclasses.replace(CONFIGS[mixer], context_attention=mode)
    one = sharding.make_mesh({}, devices=jax.devices()[:1])
    want_logits, want_grads = _logits_and_grads(config, one)
    logits, grads = _logits_and_grads(config, sharding.make_mesh(axes))
    seg = _inputs(config)[2]
    _close(logits[seg > 0], want_logits[seg > 0])
    flat_want = jax.tree_util.tree_leaves_with_path(want_grads)
    flat_got = jax.tree_util.tree_leaves(grads)
    assert len(flat_got) == len(flat_want) > 10
    for (path, want), got in zip(flat_want, flat_got, strict=True):
        assert np.max(np.abs(want)) > 0, jax.tree_util.keystr(path)
        _close(got, want)


def test_model_logits_over_a_context_mesh_equal_one_device():
    model = yoco_jax.init(CONFIGS["retention"])
    tokens, _, seg = _inputs(CONFIGS["retention"])
    mesh = sharding.make_mesh({"data": 2, "context": 4})
    got = model.logits(tokens, segment_ids=seg, mesh=mesh)
    _close(np.asarray(got)[seg > 0], np.asarray(model.logits(tokens, segment_ids=seg))[seg > 0])


def _run(output_dir, corpus, context, resets, steps=2):
    overrides = [f"output_dir={output_dir}", f"steps={steps}", f"mesh.context={context}",
                 f"data.path={corpus}", f"document_resets={str(resets).lower()}"]  # fmt: skip
    train(load_train_config(None, RUN + overrides))
    return _losses_of(output_dir)


def test_train_with_document_resets_at_context_4_matches_context_1(tmp_path):
    corpus = tmp_path / "corpus"  # short documents: several in each row of 24 tokens
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i}.py").write_text(f"f{i} = {i}\n" * (i % 3 + 1))
    want = _run(tmp_path / "unsplit", corpus, 1, True)
    got = _run(tmp_path / "split", corpus, 4, True)
    official = _run(tmp_path / "official", corpus, 1, False, steps=1)
    assert sorted(got) == sorted(want) == [1, 2]
    np.testing.assert_allclose([got[1], got[2]], [want[1], want[2]], rtol=2e-5)
    assert abs(official[1] - want[1]) > 1e-4  # the rows do hold several documents
