"""The model with attention_impl=pallas (kernels in interpret mode, GPU and TPU semantics)
computes what it computes with attention_impl=xla: logits, gradients, prefill and decode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.model import init_cache


def outputs(model, tokens):
    """Logits, every parameter gradient, prefill logits and one decode step's logits."""
    apply = lambda params, *a, **k: model.module.apply({"params": params}, *a, **k)
    logits = jax.jit(lambda p: apply(p, tokens))(model.params)
    grads = jax.jit(jax.grad(lambda p: (apply(p, tokens) ** 2).mean()))(model.params)
    prefill = jax.jit(lambda p, t, c: apply(p, t, c, fresh=True, method="extend"))
    first, cache = prefill(model.params, tokens, init_cache(model.config, tokens.shape[0], 32))
    second, _ = jax.jit(lambda p, t, c: apply(p, t, c, method="extend"))(
        model.params, tokens[:, :1], cache
    )
    return [logits, first, second], jax.tree.leaves(grads)


def rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@pytest.fixture(scope="module", params=["yoco-tiny", "yoco-swa-tiny"])
def reference(request):
    # attention head dim 16 (a Triton tile), 2 layers: one self, one cross.
    cfg = yoco_jax.get_config(request.param, n_layers=2, attention_impl="xla", sliding_window=None)
    if request.param == "yoco-swa-tiny":
        cfg = yoco_jax.config.replace_checked(cfg, sliding_window=7)
    model = yoco_jax.init(cfg, seed=4)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 19)))
    return model, tokens, outputs(model, tokens)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_pallas_model_matches_xla(reference, backend):
    model, tokens, (expected, expected_grads) = reference
    pallas = model.replace(attention_impl="pallas", kernel_backend=backend, kernel_interpret=True)
    got, grads = outputs(pallas, tokens)
    for a, b in zip(got, expected):
        assert rel(a, b) < 1e-5
    for a, b in zip(grads, expected_grads):
        assert rel(a, b) < 1e-4


def test_pallas_runs_per_device_under_a_mesh(reference):
    """Under a data x tensor mesh the kernels run in shard_map (batch and heads split)."""
    from yoco_jax import sharding

    model, tokens, (expected, _) = reference
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
    with sharding.use_mesh(mesh):
        got, _ = outputs(
            model.replace(attention_impl="pallas", kernel_backend="gpu", kernel_interpret=True),
            tokens,
        )
    for a, b in zip(got, expected):
        assert rel(a, b) < 1e-5
