"""The pre-norm decoder layer shared by both halves of YOCO and by the baseline."""

from __future__ import annotations

import flax.linen as nn
import jax
from jaxtyping import Array, Float, Int

from yoco_jax.config import ModelConfig
from yoco_jax.model.attention import CrossAttention, SelfAttention, SlidingWindowAttention
from yoco_jax.model.layers import FeedForward, RMSNorm
from yoco_jax.model.retention import GatedRetention

MIXERS = {
    "retention": GatedRetention,
    "window": SlidingWindowAttention,
    "cross": CrossAttention,
    "attention": SelfAttention,
}

REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


class DecoderLayer(nn.Module):
    """x + mixer(norm(x)), then x + ffn(norm(x)).

    `mixer_args` go to the mixer unchanged; `fresh` (static) tells a cached self-mixer that its
    cache is empty, so a prompt can use plain causal attention instead of the cache path.
    """

    config: ModelConfig
    mixer: str

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        fresh: bool = False,
        mixer_args: tuple = (),
    ) -> tuple[Float[Array, "B T D"], object]:
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.norm_eps, True, cfg.dtype, cfg.param_dtype, name=name)
        flags = {} if self.mixer == "cross" else {"fresh": fresh}
        h, aux = MIXERS[self.mixer](cfg, name="mixer")(
            norm("mixer_layer_norm")(x), positions, *mixer_args, **flags
        )
        x = x + h
        x = x + FeedForward(cfg.hidden_dim, cfg.dtype, cfg.param_dtype, name="ffn")(
            norm("final_layer_norm")(x)
        )
        return nn.with_logical_constraint(x, ACTIVATION_AXES), aux


def layer_class(config: ModelConfig):
    """DecoderLayer, wrapped in per-layer rematerialization when `config.remat` asks for it."""
    if config.remat == "none":
        return DecoderLayer
    return nn.remat(
        DecoderLayer, policy=REMAT_POLICIES[config.remat], prevent_cse=True, static_argnums=(3,)
    )
