"""Training throughput: tokens/s and model FLOP utilization of the project's train step
(yoco_jax.train.step.Trainer: AdamW with clipping, chunked cross-entropy, state donated) on one
device."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from bench import flops
from bench.machine import PeakTracker, nominal_peak, timeit
from bench.runner import Context, Skip, guarded
from yoco_jax import sharding
from yoco_jax.model import build_model
from yoco_jax.train.config import TrainConfig
from yoco_jax.train.optim import learning_rate_schedule, make_optimizer
from yoco_jax.train.step import Trainer


def train_case(ctx: Context) -> dict:
    p = ctx.profile
    cfg, batch, length = p.train, p.train_batch, p.train_length
    estimate = 3 * ctx.compile_s  # init, then forward + backward + update: a larger program
    if not ctx.budget.allows("train", estimate):
        raise Skip(f"time budget (needs ~{estimate:.0f} s)")
    tracker = PeakTracker()
    settings = TrainConfig(batch_size=batch, seq_len=length)
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    trainer = Trainer(
        build_model(cfg),
        make_optimizer(settings),
        learning_rate_schedule(settings),
        mesh,
        loss_chunk=settings.loss_chunk,
    )
    state = [trainer.init(0)]
    tokens = jax.random.randint(jax.random.key(3), (batch, length + 1), 0, cfg.vocab_size)
    ones = jnp.ones((batch, length), jnp.int32)
    data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": ones}
    data["loss_mask"] = ones

    def step(data):  # the state is donated: carry it along
        state[0], metrics = trainer.train_step(state[0], data)
        return metrics["loss"]

    t0 = time.perf_counter()
    jax.block_until_ready(step(data))  # compiles
    ctx.compile_s = time.perf_counter() - t0
    seconds = timeit(step, data, repeats=3)
    model_flops = flops.train_flops(cfg, batch, length)
    peak = nominal_peak(jax.devices()[0].device_kind)
    return {
        "seconds": seconds,
        "tokens_per_s": batch * length / seconds,
        "model_flops": model_flops,
        "mfu_measured": model_flops / seconds / ctx.matmul_rate,
        "mfu_nominal": None if peak is None else model_flops / seconds / peak,
        "device_peak": tracker.peak(),
        "summary": f"{1e3 * seconds:.1f} ms/step, {batch * length / seconds:.0f} tok/s",
    }


def run(ctx: Context) -> list[dict]:
    p = ctx.profile
    row = {"config": p.train, "batch": p.train_batch, "length": p.train_length}
    label = f"train {p.train.arch} {p.train.dim}d x {p.train.n_layers}"
    return [{**row, **guarded(ctx, label, train_case, ctx)}]
