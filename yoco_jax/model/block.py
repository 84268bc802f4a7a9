"""The pre-norm decoder layer shared by both halves of YOCO and by the baseline."""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
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

# Named activations (`jax.ad_checkpoint.checkpoint_name`) a remat policy may keep instead of
# recomputing; everything else in a layer is recomputed in the backward pass. A few tags at the
# points the backward needs, each a [B, T, *] tensor (the layer input is always kept by remat):
#   "qkv"        a mixer's input projections: q, k (after rotary), v; retention's gate too;
#   "mixer_out"  the mixer's context, the input of its out_proj (attention / retention output);
#   "mlp_hidden" the FFN's two [B, T, hidden_dim] projections (fc1 and gate, before SwiGLU);
#   "residual"   x + mixer(norm(x)), the FFN half's input.
# The attention kernels' own residuals (output, log-sum-exp) are not named: under any policy
# but "none" the backward runs the attention forward again (its out_proj input is "mixer_out").
NAMES = ("qkv", "mixer_out", "mlp_hidden", "residual")
_named = jax.checkpoint_policies.save_only_these_names

REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_mixer_out": _named("mixer_out"),
    "save_qkv_and_mixer_out": _named("qkv", "mixer_out"),  # recompute norms and the FFN
    "save_all_named": _named(*NAMES),  # recompute norms, rotary, SwiGLU and attention only
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
        x = checkpoint_name(x + h, "residual")
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
