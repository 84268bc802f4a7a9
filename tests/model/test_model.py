"""Model plumbing: rematerialization changes memory, not numbers; every parameter carries
logical axis names for the sharding rules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import yoco_jax
from yoco_jax.model import build_model
from yoco_jax.model.block import REMAT_POLICIES


@pytest.fixture(scope="module", params=["yoco-tiny", "yoco-swa-tiny", "transformer-tiny"])
def setup(request):
    cfg = yoco_jax.get_config(request.param, n_layers=2)
    model = yoco_jax.init(cfg, seed=2)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 21)))
    return model, tokens


def loss_and_grads(config, params, tokens):
    loss = lambda p: (build_model(config).apply({"params": p}, tokens) ** 2).mean()
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("policy", sorted(REMAT_POLICIES))
def test_remat_gives_the_same_loss_and_gradients(setup, policy):
    model, tokens = setup
    loss, grads = loss_and_grads(model.config, model.params, tokens)
    remat = yoco_jax.config.replace_checked(model.config, remat=policy)
    loss_r, grads_r = loss_and_grads(remat, model.params, tokens)
    traced = jax.make_jaxpr(lambda p: build_model(remat).apply({"params": p}, tokens))
    primitives = [eqn.primitive.name for eqn in traced(model.params).jaxpr.eqns]
    assert sum(name.startswith(("remat", "checkpoint")) for name in primitives) == 2  # 2 layers
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_every_parameter_has_logical_axis_names(setup):
    model, tokens = setup
    boxed = jax.eval_shape(build_model(model.config).init, jax.random.key(0), tokens)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim
        assert {n for n in leaf.names if n} <= {
            "embed",
            "vocab",
            "heads",
            "kv_heads",
            "mlp",
            "norm",
        }
