"""The train step's numerics (issue 15): the learning rate follows the step across skipped
NaN steps, and gradient accumulation keeps float32 precision with bfloat16 parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from yoco_jax import sharding
from yoco_jax.config import get_config
from yoco_jax.model import build_model
from yoco_jax.train.config import TrainConfig
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.step import Trainer

TINY = get_config("yoco-tiny", n_layers=2)


def random_batch(rng, rows, length, vocab=TINY.vocab_size):
    tokens = rng.integers(0, vocab, (rows, length + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "segment_ids": np.ones((rows, length), np.int32),
        "loss_mask": (rng.random((rows, length)) > 0.25).astype(np.float32),
    }


def numpy_adamw(params, grad_steps, lr, cfg: TrainConfig):
    """float64 AdamW: the params after the last of `grad_steps` (one gradient list per applied
    update, all in the moments) is applied to `params` at learning rate `lr`: clip by global
    norm, bias correction by the number of updates, decoupled decay of matrices."""
    mu = [0.0] * len(params)
    nu = [0.0] * len(params)
    for grads in grad_steps:
        grads = [np.asarray(g, np.float64) for g in grads]
        norm = np.sqrt(sum((g**2).sum() for g in grads))
        grads = [g * min(1.0, cfg.clip_norm / norm) for g in grads]
        mu = [cfg.beta1 * m + (1 - cfg.beta1) * g for m, g in zip(mu, grads)]
        nu = [cfg.beta2 * n + (1 - cfg.beta2) * g**2 for n, g in zip(nu, grads)]
    count = len(grad_steps)
    out = []
    for p, m, n in zip(params, mu, nu):
        p = np.asarray(p, np.float64)
        m_hat, n_hat = m / (1 - cfg.beta1**count), n / (1 - cfg.beta2**count)
        update = m_hat / (np.sqrt(n_hat) + cfg.eps) + (cfg.weight_decay * p if p.ndim >= 2 else 0)
        out.append(p - lr * update)
    return out


def test_after_a_skipped_step_the_update_uses_the_logged_learning_rate():
    """Steps 0 (applied), 1 (NaN: skipped), 2 (applied): step 2's update is AdamW's second
    update (two gradients in the moments) at the rate schedule(2), which is also logged."""
    config = TrainConfig(learning_rate=1e-2, warmup_steps=4, steps=10, clip_norm=1.0)
    schedule = learning_rate_schedule(config)
    mesh = sharding.make_mesh({}, jax.devices()[:1])
    trainer = Trainer(build_model(TINY), make_optimizer(config), schedule, mesh, loss_chunk=6)
    rng = np.random.default_rng(0)
    batches = [random_batch(rng, 4, 9) for _ in range(3)]
    batches[1]["loss_mask"][0, 0] = np.nan
    put = lambda b: jax.device_put(b, trainer.batch_sharding)

    state = trainer.init(seed=0)
    g0 = jax.tree.leaves(jax.device_get(trainer.gradients(state, put(batches[0]))[0]))
    state, _ = trainer.train_step(state, put(batches[0]))
    state, skipped = trainer.train_step(state, put(batches[1]))
    assert not skipped["finite"]
    before = jax.tree.leaves(jax.device_get(state.params))
    g2 = jax.tree.leaves(jax.device_get(trainer.gradients(state, put(batches[2]))[0]))
    state, metrics = trainer.train_step(state, put(batches[2]))

    lr = 1e-2 * 2 / 4  # linear warmup from 0 to 1e-2 over 4 steps, at step 2
    np.testing.assert_allclose(metrics["learning_rate"], lr, rtol=1e-6)
    expected = numpy_adamw(before, [g0, g2], lr, config)
    for got, want, old in zip(jax.tree.leaves(state.params), expected, before):
        np.testing.assert_allclose(got, want, rtol=0, atol=lr * 1e-4)
        assert np.abs(np.asarray(got) - old).max() > lr / 2  # it moved, by about lr


def test_bfloat16_params_accumulate_gradients_in_float32():
    """With bfloat16 params, the gradient's error against a float32 reference must not grow with
    the number of micro-batches (a bfloat16 accumulator rounds at every one)."""
    config = TrainConfig(learning_rate=1e-2, warmup_steps=1, steps=10)
    model = build_model(get_config("yoco-tiny", n_layers=2, param_dtype="bfloat16"))
    mesh = sharding.make_mesh({}, jax.devices()[:1])
    trainers = {
        accum: Trainer(
            model,
            make_optimizer(config),
            learning_rate_schedule(config),
            mesh,
            grad_accum=accum,
            loss_chunk=8,
        )  # fmt: skip
        for accum in (1, 16)
    }
    state = trainers[1].init(seed=0)
    batch = random_batch(np.random.default_rng(1), 16, 8)

    reference_model = build_model(get_config("yoco-tiny", n_layers=2))
    params = jax.tree.map(lambda p: p.astype(jnp.float32), state.params)

    @jax.jit
    def reference(params):  # float32 logits of the whole batch at once
        logits = reference_model.apply({"params": params}, batch["inputs"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return jnp.sum(losses * batch["loss_mask"]) / jnp.sum(batch["loss_mask"])

    want = np.concatenate([np.ravel(g) for g in jax.tree.leaves(jax.grad(reference)(params))])
    errors = {}
    for accum, trainer in trainers.items():
        grads = trainer.gradients(state, jax.device_put(batch, trainer.batch_sharding))[0]
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
        got = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
        errors[accum] = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert errors[1] < 1e-2
    assert errors[16] < 1.3 * errors[1], errors
