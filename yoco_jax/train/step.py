"""Train state, its sharded initialization and the jitted train / eval steps.

`Trainer` derives every sharding once from `jax.eval_shape` of the initializer (parameters and
optimizer state through the logical-axis rules, batches over the data-parallel axes) and compiles
one train step with explicit in/out shardings and the state donated.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from yoco_jax import sharding
from yoco_jax.train.context_loss import cross_entropy_sums

BATCH_KEYS = ("inputs", "targets", "segment_ids", "loss_mask")


class TrainState(NamedTuple):
    step: jax.Array  # int32 []: the number of steps taken (= the index of the next batch)
    params: Any  # pytree in the model's param_dtype (float32)
    opt_state: Any  # optax state, float32
    rng: jax.Array  # uint32 [2]: raw key data, folded with the step for per-step randomness


class Trainer:
    """Compiled, sharded training functions for one model, optimizer and mesh.

    module: a linen model with `apply(variables, tokens, method="hidden")` -> final-normed
    hidden states [B, T, D] and params["output_projection"]["kernel"] [D, V]. Packed documents
    share one causal context per row, unless `document_resets`: then the batch's segment ids go
    to the model, which computes each document as if it were alone (ops/documents.py).
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: optax.GradientTransformation,
        schedule: optax.Schedule,
        mesh: Mesh,
        *,
        grad_accum: int = 1,
        loss_chunk: int = 1024,
        document_resets: bool = False,
    ):
        self.module, self.optimizer, self.schedule, self.mesh = module, optimizer, schedule, mesh
        self.grad_accum, self.loss_chunk = grad_accum, loss_chunk
        self.document_resets = document_resets
        self.batch_sharding = sharding.batch_sharding(mesh)
        with sharding.ensure_mesh(mesh):
            boxed = jax.eval_shape(lambda rng: self._init(rng, unbox=False), jax.random.key(0))
            self.state_shardings = sharding.logical_shardings(boxed, mesh)
        self.abstract_state = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            sharding.unbox(boxed),
            self.state_shardings,
        )
        replicated = sharding.replicated(mesh)
        self._init_jit = jax.jit(self._init, out_shardings=self.state_shardings)
        self._train_jit = jax.jit(
            self._train_step,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=0,
        )
        self._gradients_jit = jax.jit(
            self._gradients,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings.params, replicated, replicated),
        )
        self._eval_jit = jax.jit(
            self._eval_step,
            in_shardings=(self.state_shardings.params, self.batch_sharding),
            out_shardings=replicated,
        )

    # Public entry points trace under the mesh context, so activation constraints apply. The
    # training loop enters it once for the run (train/loop.py); a standalone call enters it.

    def init(self, seed: int) -> TrainState:
        with sharding.ensure_mesh(self.mesh):
            return self._init_jit(jax.random.key(seed))

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimizer step on a global batch (dict of [B, T] arrays); `state` is donated.

        Metrics (replicated scalars): loss (token mean), grad_norm (before clipping),
        learning_rate (schedule(step), the rate applied), tokens (counted targets), finite
        (False: the update was skipped; the step still advances, so the schedule goes on, while
        Adam's moments and bias-correction count stay those of the updates applied).
        """
        with sharding.ensure_mesh(self.mesh):
            return self._train_jit(state, batch)

    def gradients(self, state: TrainState, batch: dict):
        """(float32 gradient of the token-mean loss, summed loss, token count) of a global batch,
        accumulated over `grad_accum` micro-batches: the gradient `train_step` applies."""
        with sharding.ensure_mesh(self.mesh):
            return self._gradients_jit(state, batch)

    def eval_loss_sums(self, params, batch: dict) -> tuple[jax.Array, jax.Array]:
        """(summed loss, counted tokens) of one batch."""
        with sharding.ensure_mesh(self.mesh):
            return self._eval_jit(params, batch)

    # Traced bodies.

    def _init(self, rng: jax.Array, *, unbox: bool = True) -> TrainState:
        init_rng, train_rng = jax.random.split(rng)
        params = self.module.init(init_rng, jnp.zeros((1, 8), jnp.int32))["params"]
        if unbox:
            params = sharding.unbox(params)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            rng=jax.random.key_data(train_rng),
        )

    def _loss_sums(self, params, batch: dict, rng: jax.Array | None):
        """(summed loss, token count); `rng` feeds dropout-like layers, None when evaluating."""
        hidden = self.module.apply(
            {"params": params},
            batch["inputs"],
            segment_ids=batch["segment_ids"] if self.document_resets else None,
            method="hidden",
            rngs=None if rng is None else {"dropout": rng},
        )
        kernel = params["output_projection"]["kernel"]
        return cross_entropy_sums(
            hidden, kernel, batch["targets"], batch["loss_mask"], chunk=self.loss_chunk
        )

    def _gradients(self, state: TrainState, batch: dict):
        """(float32 gradient of the batch's token-mean loss, summed loss, token count).

        Gradients of the summed loss are accumulated in float32 over the micro-batches whatever
        the params' dtype (bfloat16 sums would lose precision with every micro-batch), then
        divided by the token count of the whole batch: exactly the gradient of the batch mean.
        """
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        micro_batches = jax.tree_util.tree_map(self._split_micro_batches, batch)
        grad_fn = jax.value_and_grad(lambda p, b: self._loss_sums(p, b, rng), has_aux=True)

        def accumulate(carry, micro_batch):
            grad_sum, loss_sum, count = carry
            (micro_loss, micro_count), grads = grad_fn(state.params, micro_batch)
            grad_sum = jax.tree_util.tree_map(lambda s, g: s + g.astype(s.dtype), grad_sum, grads)
            return (grad_sum, loss_sum + micro_loss, count + micro_count), None

        zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grad_sum, loss_sum, count), _ = jax.lax.scan(accumulate, init, micro_batches)
        grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(count, 1.0), grad_sum)
        return grads, loss_sum, count

    def _train_step(self, state: TrainState, batch: dict):
        grads, loss_sum, count = self._gradients(state, batch)
        loss = loss_sum / jnp.maximum(count, 1.0)
        grad_norm = optax.tree.norm(grads)

        # The learning rate follows the step, also after skipped steps: the schedule's counter
        # is set to it. Adam's own counter (its bias correction) counts the updates applied, as
        # its moments do. The optimizer state keeps the params' dtype: cast the gradient to it.
        opt_state = _schedule_at(state.opt_state, state.step)
        grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = self.optimizer.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient leaves params and optimizer state untouched, so a bad
        # step can never reach a checkpoint; the loop decides whether to stop or go on.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree_util.tree_map(
            lambda n, o: jnp.where(finite, n, o), new, old
        )
        new_state = TrainState(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            rng=state.rng,
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": self.schedule(state.step),
            "tokens": count,
            "finite": finite,
        }
        return new_state, metrics

    def _split_micro_batches(self, x: jax.Array) -> jax.Array:
        """[B, T] -> [grad_accum, B / grad_accum, T], micro-batch a = rows a, a + k, a + 2k, ...

        Strided rows keep every micro-batch spread over all data-parallel devices (a contiguous
        split would put each micro-batch on a subset of them).
        """
        batch = x.shape[0]
        micro = x.reshape(batch // self.grad_accum, self.grad_accum, *x.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, sharding.BATCH_AXES, *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(micro, NamedSharding(self.mesh, spec))

    def _eval_step(self, params, batch: dict):
        return self._loss_sums(params, batch, None)


def _schedule_at(opt_state, step: jax.Array):
    """`opt_state` with every learning-rate schedule's counter (optax ScaleByScheduleState) set
    to `step`, so the update applies `schedule(step)`, the rate that is logged."""
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
    return jax.tree_util.tree_map(
        lambda x: (
            optax.ScaleByScheduleState(count=step.astype(x.count.dtype)) if is_schedule(x) else x
        ),
        opt_state,
        is_leaf=is_schedule,
    )
