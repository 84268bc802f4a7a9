"""Pallas attention under tensor parallelism when head counts do not divide `tensor` (issue 15):
every mesh the sharding rules accept runs, and computes what one device computes."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax import sharding
from yoco_jax.model import init_cache

# Attention head dims 16 or 32 (Triton tiles), 2 layers: one self-decoder, one cross-decoder.
CONFIGS = {
    # 8 query heads, 2 kv heads: over tensor=4 and 8 the query heads split, the kv heads do not.
    "gret-8q-2kv": dict(dim=128, n_self_heads=4, n_attn_heads=8, n_attn_kv_heads=2),
    # 12 query heads (split over 4, not over 8), 2 kv heads, SWA with 6 heads (never split).
    "swa-12q-6self": dict(
        dim=192, n_self_heads=6, n_attn_heads=12, n_attn_kv_heads=2, sliding_window=7
    ),
}
CASES = [  # (config, mesh)
    ("gret-8q-2kv", {"tensor": 8}),
    ("swa-12q-6self", {"data": 2, "tensor": 4}),
    ("swa-12q-6self", {"tensor": 8}),
]


def outputs(model, tokens, cache):
    """Logits, every parameter gradient, and one decode step's logits after `cache`."""
    apply = lambda params, *a, **k: model.module.apply({"params": params}, *a, **k)

    def loss(params):
        logits = apply(params, tokens)
        return (logits**2).mean(), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(model.params)
    step, _ = jax.jit(lambda p, t, c: apply(p, t, c, method="extend"))(
        model.params, tokens[:, :1], cache
    )
    return [logits, step], jax.tree.leaves(grads)


def rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@pytest.fixture(scope="module")
def one_device():
    """name -> (model, tokens, a prefilled cache, its outputs on one device: the XLA path)."""
    results = {}
    for name, overrides in CONFIGS.items():
        cfg = yoco_jax.get_config("yoco-tiny", n_layers=2, attention_impl="xla")
        model = yoco_jax.init(yoco_jax.config.replace_checked(cfg, **overrides), seed=3)
        tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 19)))
        prefill = jax.jit(partial(model.module.apply, fresh=True, method="extend"))
        _, cache = prefill({"params": model.params}, tokens, init_cache(model.config, 2, 32))
        results[name] = model, tokens, cache, outputs(model, tokens, cache)
    return results


@pytest.mark.parametrize("name, axes", CASES, ids=lambda x: x if isinstance(x, str) else
                         "x".join(f"{k}{v}" for k, v in x.items()))  # fmt: skip
def test_pallas_under_tensor_parallelism_matches_one_device(one_device, name, axes):
    model, tokens, cache, (expected, expected_grads) = one_device[name]
    mesh = sharding.make_mesh(axes)
    with sharding.use_mesh(mesh):
        got, grads = outputs(
            model.replace(attention_impl="pallas", kernel_backend="gpu", kernel_interpret=True),
            tokens,
            cache,
        )
    for a, b in zip(got, expected):
        assert rel(a, b) < 1e-5
    for a, b in zip(grads, expected_grads):
        assert rel(a, b) < 1e-4
