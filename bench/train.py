"""Training throughput: tokens/s and model FLOP utilization of one AdamW step (mean next-token
cross-entropy, jax.value_and_grad, params and optimizer state donated)."""

from __future__ import annotations

import functools
import time

import jax
import optax

from bench import flops
from bench.machine import nominal_peak, planned_peak, timeit
from bench.models import random_params
from bench.runner import Context, Skip, guarded
from yoco_jax.model import build_model


def make_step(cfg, optimizer):
    module = build_model(cfg)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, tokens):
        def loss_fn(p):
            logits = module.apply({"params": p}, tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train_case(ctx: Context) -> dict:
    p = ctx.profile
    cfg, batch, length = p.train, p.train_batch, p.train_length
    if not ctx.budget.allows("train", ctx.compile_s):
        raise Skip("time budget")
    optimizer = optax.adamw(1e-4, weight_decay=0.1)
    params = random_params(cfg)
    opt_state = optimizer.init(params)
    tokens = jax.random.randint(jax.random.key(3), (batch, length + 1), 0, cfg.vocab_size)
    t0 = time.perf_counter()
    compiled = make_step(cfg, optimizer).lower(params, opt_state, tokens).compile()
    ctx.compile_s = time.perf_counter() - t0
    state = [params, opt_state]

    def step(tokens):  # params and optimizer state are donated: carry them along
        state[0], state[1], loss = compiled(state[0], state[1], tokens)
        return loss

    seconds = timeit(step, tokens, repeats=3)
    model_flops = flops.train_flops(cfg, batch, length)
    peak = nominal_peak(jax.devices()[0].device_kind)
    return {
        "seconds": seconds,
        "tokens_per_s": batch * length / seconds,
        "model_flops": model_flops,
        "mfu_measured": model_flops / seconds / ctx.matmul_rate,
        "mfu_nominal": None if peak is None else model_flops / seconds / peak,
        "planned_peak": planned_peak(compiled),
        "summary": f"{1e3 * seconds:.1f} ms/step, {batch * length / seconds:.0f} tok/s",
    }


def run(ctx: Context) -> list[dict]:
    p = ctx.profile
    row = {"config": p.train, "batch": p.train_batch, "length": p.train_length}
    label = f"train {p.train.arch} {p.train.dim}d x {p.train.n_layers}"
    return [{**row, **guarded(ctx, label, train_case, ctx)}]
