"""Mesh construction, the logical-axis rules, and equal losses for every mesh shape."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from yoco_jax import sharding
from yoco_jax.config import get_config
from yoco_jax.model import build_model
from yoco_jax.train.config import TrainConfig
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.step import Trainer

TINY = get_config("yoco-tiny", n_layers=2)
OPT = TrainConfig(learning_rate=1e-2, warmup_steps=1, steps=4, schedule="cosine")


def test_mesh_shape_fills_the_free_axis():
    assert sharding.mesh_shape({"data": -1}, 8) == (8, 1, 1, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 1, 2)
    assert sharding.mesh_shape({"data": 1, "fsdp": 1, "tensor": 1}, 1) == (1, 1, 1, 1)
    assert sharding.mesh_shape({"context": -1, "tensor": 2}, 8) == (1, 1, 4, 2)


@pytest.mark.parametrize(
    "axes, message",
    [
        ({"fsdp": 3, "data": -1}, "does not divide"),
        ({"data": 2, "fsdp": 2}, "needs 4 devices but 8"),
        ({"data": -1, "fsdp": -1}, "at most one"),
        ({"pipeline": 2}, "unknown mesh axes"),
        ({"data": 0}, "positive or -1"),
    ],
)
def test_mesh_shape_errors(axes, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(axes, 8)


def test_batch_must_divide_over_data_parallel_axes():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharding.check_batch_divides(8, mesh)
    with pytest.raises(ValueError, match="batch_size=6 does not divide over the 4"):
        sharding.check_batch_divides(6, mesh)


def test_single_process_holds_the_whole_batch():
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    assert sharding.process_batch_slice(sharding.batch_sharding(mesh), 8) == (0, 1)


def test_rules_place_parameters_and_optimizer_state():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    trainer = Trainer(build_model(TINY), make_optimizer(OPT), learning_rate_schedule(OPT), mesh)
    specs = jax.tree_util.tree_map(lambda s: s.spec, trainer.state_shardings)
    params = specs.params
    assert params["output_projection"]["kernel"] == P("fsdp", "tensor")
    assert params["embed_tokens"]["embedding"] == P("tensor", "fsdp")
    assert params["self_decoder"]["layers_0"]["ffn"]["fc2"]["kernel"] == P("tensor", "fsdp")
    assert params["layer_norm"]["weight"] == P(None)
    # AdamW moments follow their parameters; counters and the step are replicated.
    adam = specs.opt_state[1][0]
    assert adam.mu["output_projection"]["kernel"] == P("fsdp", "tensor")
    assert adam.nu["embed_tokens"]["embedding"] == P("tensor", "fsdp")
    assert adam.count == P() and specs.step == P()


def test_indivisible_dimensions_are_replicated_with_a_warning():
    mesh = sharding.make_mesh({"tensor": 8})
    config = get_config("yoco-tiny", n_layers=2, hidden_dim=100)  # 100 mlp units over 8
    with pytest.warns(UserWarning, match="fc1.*over tensor"):
        trainer = Trainer(build_model(config), make_optimizer(OPT), learning_rate_schedule(OPT),
                          mesh)  # fmt: skip
    fc1 = trainer.state_shardings.params["self_decoder"]["layers_0"]["ffn"]["fc1"]["kernel"]
    assert fc1.spec == P("fsdp", None)  # fsdp (size 1) divides; tensor (8) does not


def _trainer(mesh, grad_accum=1):
    return Trainer(
        build_model(TINY), make_optimizer(OPT), learning_rate_schedule(OPT), mesh,
        grad_accum=grad_accum, loss_chunk=7,
    )  # fmt: skip


def _losses(trainer, state, steps=3):
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        tokens = rng.integers(0, TINY.vocab_size, (8, 17)).astype(np.int32)
        batch = {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "segment_ids": np.ones((8, 16), np.int32),
            "loss_mask": (rng.random((8, 16)) > 0.2).astype(np.float32),
        }
        state, metrics = trainer.train_step(state, jax.device_put(batch, trainer.batch_sharding))
        losses.append(float(metrics["loss"]))
    return np.array(losses), np.asarray(state.params["output_projection"]["kernel"])


@pytest.fixture(scope="module")
def one_device():
    """(initial state on the host, losses, final output kernel) on a single device."""
    trainer = _trainer(sharding.make_mesh({}, devices=jax.devices()[:1]))
    state = trainer.init(seed=1)
    host_state = jax.device_get(state)
    return host_state, *_losses(trainer, state)


def test_initialization_does_not_depend_on_the_mesh(one_device):
    trainer = _trainer(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    state = jax.device_get(trainer.init(seed=1))
    for got, want in zip(
        jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(one_device[0])
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "axes, grad_accum",
    [
        ({"data": 8}, 1),
        ({"fsdp": 8}, 1),
        ({"tensor": 8}, 1),
        ({"data": 2, "fsdp": 2, "tensor": 2}, 2),
    ],
)
def test_every_mesh_gives_the_same_losses(one_device, axes, grad_accum):
    initial, reference_losses, reference_kernel = one_device
    trainer = _trainer(sharding.make_mesh(axes), grad_accum)
    losses, kernel = _losses(trainer, jax.device_put(initial, trainer.state_shardings))
    assert reference_losses[-1] < reference_losses[0]  # it trains
    np.testing.assert_allclose(losses, reference_losses, rtol=2e-5)
    np.testing.assert_allclose(kernel, reference_kernel, rtol=1e-4, atol=1e-6)
