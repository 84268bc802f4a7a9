"""AdamW with gradient clipping and a warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("linear", "cosine", "constant")


def learning_rate_schedule(config) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then a decay to
    `learning_rate * min_lr_ratio` at `steps`: linear (fairseq's polynomial decay with power 1,
    the official default), cosine, or none (constant)."""
    if config.schedule not in SCHEDULES:
        raise ValueError(f"schedule={config.schedule!r}; valid choices are {list(SCHEDULES)}")
    peak, warmup = config.learning_rate, config.warmup_steps
    end = peak * config.min_lr_ratio
    decay_steps = max(1, config.steps - warmup)
    decay = {
        "linear": optax.linear_schedule(peak, end, decay_steps),
        "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=config.min_lr_ratio),
        "constant": optax.constant_schedule(peak),
    }[config.schedule]
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
    """Weight decay applies to matrices only (not to norm scales or other vectors)."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(config) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW (official defaults: betas (0.9, 0.95), eps 1e-6, weight
    decay 0.05, clip 2.0; clip_norm=0 turns clipping off). Its state has the params' dtype."""
    clip = optax.clip_by_global_norm(config.clip_norm) if config.clip_norm > 0 else optax.identity()
    return optax.chain(
        clip,
        optax.adamw(
            learning_rate_schedule(config),
            b1=config.beta1,
            b2=config.beta2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        ),
    )
