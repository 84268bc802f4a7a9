"""Packed documents (segment ids): every document computed as if it were alone, its logits and
gradients those of the document run on its own; padding (segment 0) changes nothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.config import get_config
from yoco_jax.model import build_model
from yoco_jax.ops.documents import document_positions, document_starts
from yoco_jax.ops.retention import chunkwise_retention, parallel_retention, recurrent_retention

pytestmark = pytest.mark.slow  # every gradient of three models: not in `-m "not slow"`

# chunk 4: documents ending on chunk edges (4, 8) and off them, one token long, and a window (8)
# that reaches back over several boundaries; row 0 ends in 3 padding tokens.
CONFIGS = {
    "retention": get_config("yoco-tiny", n_layers=2, chunk_size=4, dtype="float32"),
    "window": get_config(
        "yoco-swa-tiny", n_layers=2, chunk_size=4, sliding_window=8, dtype="float32"
    ),
    "transformer": get_config("transformer-tiny", n_layers=2, dtype="float32"),
}
LENGTHS = [[4, 1, 9, 5, 1, 9], [8, 12, 1, 3, 8]]  # then padding: row 0 has 29 of 32 tokens
LENGTH = 32


def _segments(lengths=LENGTHS, length=LENGTH):
    seg = np.zeros((len(lengths), length), np.int32)
    for row, pieces in enumerate(lengths):
        ends = np.cumsum(pieces)
        for i, (start, end) in enumerate(zip(ends - pieces, ends, strict=True)):
            seg[row, start:end] = i + 1
    return seg


def _documents(seg):
    """(row, start, end) of every document (segment > 0)."""
    for row in range(seg.shape[0]):
        for s in np.unique(seg[row][seg[row] > 0]):
            at = np.flatnonzero(seg[row] == s)
            yield row, at[0], at[-1] + 1


def _setup(config, length=LENGTH):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, config.vocab_size, (len(LENGTHS), length)).astype(np.int32)
    weights = rng.normal(size=(*tokens.shape, config.vocab_size)).astype(np.float32)
    model = build_model(config)
    params = model.init(jax.random.key(0), tokens[:, :8])
    return model, params, tokens, weights


def _logits_and_grads(model, params, tokens, weights, segment_ids=None):
    """(logits, gradients of sum(logits * weights))."""

    def loss(params):
        logits = model.apply(params, tokens, segment_ids=segment_ids)
        return jnp.sum(logits * weights), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return jax.device_get((logits, grads))


def _close(got, want):
    """float32 agreement to 1e-5 of the expected array's largest magnitude."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


@pytest.mark.parametrize("mixer", list(CONFIGS))
def test_packed_logits_and_every_gradient_equal_each_document_alone(mixer):
    model, params, tokens, weights = _setup(CONFIGS[mixer])
    seg = _segments()
    weights = weights * (seg > 0)[..., None]  # padding's logits are not compared
    logits, grads = _logits_and_grads(model, params, tokens, weights, seg)
    want_grads = jax.tree.map(np.zeros_like, grads)
    for row, start, end in _documents(seg):
        alone = slice(row, row + 1), slice(start, end)
        doc_logits, doc_grads = _logits_and_grads(model, params, tokens[alone], weights[alone])
        _close(logits[alone], doc_logits)
        want_grads = jax.tree.map(np.add, want_grads, doc_grads)
    flat_want = jax.tree_util.tree_leaves_with_path(want_grads)
    flat_got = jax.tree_util.tree_leaves(grads)
    assert len(flat_got) == len(flat_want) > 10
    for (path, want), got in zip(flat_want, flat_got, strict=True):
        assert np.max(np.abs(want)) > 0, jax.tree_util.keystr(path)  # every parameter is used
        _close(got, want)


@pytest.mark.parametrize("mixer", ["retention", "window"])
def test_padding_changes_nothing_and_one_document_is_the_plain_model(mixer):
    model, params, tokens, _ = _setup(CONFIGS[mixer])
    seg = _segments()
    logits = model.apply(params, tokens, segment_ids=seg)
    other = np.where(seg > 0, tokens, (tokens + 7) % CONFIGS[mixer].vocab_size)
    assert (other != tokens).any()
    np.testing.assert_array_equal(model.apply(params, other, segment_ids=seg)[seg > 0],
                                  logits[seg > 0])  # fmt: skip
    plain = model.apply(params, tokens)
    _close(model.apply(params, tokens, segment_ids=np.ones_like(seg)), plain)
    assert np.max(np.abs(logits - plain)[seg > 0]) > 1e-2  # the resets do change the model


def test_document_starts_and_positions():
    seg = jnp.asarray([[1, 1, 2, 3, 3, 3, 0, 0]])
    np.testing.assert_array_equal(document_starts(seg), [[1, 0, 1, 1, 0, 0, 1, 0]])
    np.testing.assert_array_equal(document_positions(seg), [[0, 1, 0, 0, 1, 2, 0, 1]])


@pytest.mark.parametrize("chunk, group_tokens", [(1, 0), (4, 0), (4, 16), (64, None)])
def test_retention_forms_restart_their_state_at_each_document(chunk, group_tokens):
    """Chunkwise (chunks one at a time or batched in groups) and recurrent, each against the
    parallel reference run on each document alone."""
    rng = np.random.default_rng(1)
    b, t, h, d = 2, LENGTH, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32) for _ in range(3))
    log_gate = jnp.asarray(-rng.uniform(0.01, 0.5, (b, t, h)), jnp.float32)
    seg = _segments()
    starts = document_starts(jnp.asarray(seg))
    out, _ = chunkwise_retention(q, k, v, log_gate, chunk, None, group_tokens, starts=starts)
    state, steps = jnp.zeros((b, h, d, d)), []
    for i in range(t):
        o, state = recurrent_retention(
            q[:, i], k[:, i], v[:, i], log_gate[:, i], state, starts[:, i]
        )
        steps.append(o)
    recurrent = jnp.stack(steps, axis=1)
    for row, start, end in _documents(seg):
        alone = slice(row, row + 1), slice(start, end)
        want = parallel_retention(q[alone], k[alone], v[alone], log_gate[alone])
        _close(out[alone], want)
        _close(recurrent[alone], want)


def test_model_logits_take_segment_ids_and_refuse_a_bad_shape():
    model = yoco_jax.init(CONFIGS["retention"])
    _, _, tokens, _ = _setup(CONFIGS["retention"])
    seg = _segments()
    row, start, end = next(_documents(seg[1:]))
    got = model.logits(tokens, segment_ids=seg)[1, start:end]
    _close(got, model.logits(tokens[1:, start:end])[0])
    with pytest.raises(ValueError, match="segment_ids must be integers shaped like the tokens"):
        model.logits(tokens, segment_ids=seg[:, :-1])


@pytest.mark.parametrize("mixer", ["retention", "window"])
def test_packed_documents_run_the_xla_forms_whatever_the_kernel_settings(mixer):
    """The Pallas kernels take no segment ids: `attend` and the retention dispatcher route
    packed batches to XLA (one place each); without segment ids the kernels run."""
    kernels = dict(attention_impl="pallas", retention_impl="pallas", kernel_backend="gpu")
    config = dataclasses.replace(CONFIGS[mixer], kernel_interpret=True, **kernels)
    model, params, tokens, _ = _setup(config)

    def jaxpr(seg):
        return str(jax.make_jaxpr(lambda t: model.apply(params, t, segment_ids=seg))(tokens))

    assert "pallas_call" in jaxpr(None)
    assert "pallas_call" not in jaxpr(_segments())
