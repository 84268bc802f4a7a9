"""Gated retention (gRet), the default YOCO self-decoder mixer."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Bool, Float, Int

from yoco_jax import sharding
from yoco_jax.config import ModelConfig
from yoco_jax.model.cache import RetentionState
from yoco_jax.model.layers import Linear, RMSNorm, project_qkv, xavier_uniform
from yoco_jax.ops import context_retention, retention_kernel
from yoco_jax.ops.documents import document_starts
from yoco_jax.ops.retention import recurrent_retention

GATE_LOGIT_NORMALIZER = 16  # gamma = sigmoid(x W)^(1/16)


class GatedRetention(nn.Module):
    """q, k (rotary), v, per-head data-dependent decay; out = out_proj(silu(x W_g) * norm(o))."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        cache: RetentionState | None = None,
        valid: Bool[Array, "B T"] | None = None,
        segment_ids: Int[Array, "B T"] | None = None,
        fresh: bool = False,
    ) -> tuple[Float[Array, "B T D"], RetentionState | None]:
        cfg = self.config
        b, t, dim = x.shape
        h, d = cfg.n_self_heads, cfg.self_head_dim
        qkvg_init = xavier_uniform(2**-2.5)
        dense = lambda n, name, init=qkvg_init, axes=("embed", "heads"): Linear(
            n, axes, cfg.dtype, cfg.param_dtype, init, name=name
        )
        q, k, v = project_qkv(cfg, x, positions, h, h, d, qkvg_init)
        gate = checkpoint_name(dense(dim, "g_proj")(x), "qkv")  # remat names: model/block.py
        log_gate = nn.log_sigmoid(dense(h, "gt_proj", axes=("embed", None))(x))
        log_gate = log_gate.astype(jnp.float32) / GATE_LOGIT_NORMALIZER
        if valid is not None:  # padding: no key, no decay, so the state stops at the last token
            k = jnp.where(valid[..., None, None], k, 0)
            log_gate = jnp.where(valid[..., None], log_gate, 0.0)

        # XLA or the Pallas kernel (retention_impl), forward and backward (ops/retention_kernel.py)
        chunkwise = functools.partial(
            retention_kernel.chunkwise, impl=cfg.retention_impl, **cfg.kernel_options
        )
        split = sharding.tracing().context_size > 1  # the sequence split over devices
        starts = None if segment_ids is None else document_starts(segment_ids)  # packed
        if cache is None and split:
            o = context_retention.retention(q, k, v, log_gate, cfg.chunk_size, starts=starts)
            new_cache = None
        elif cache is None:
            o, _ = chunkwise(q, k, v, log_gate, cfg.chunk_size, starts=starts)
            new_cache = None
        elif t == 1:
            o, state = recurrent_retention(q[:, 0], k[:, 0], v[:, 0], log_gate[:, 0], cache.state)
            o, new_cache = o[:, None], RetentionState(state)
        else:  # a prompt chunk; split over devices under a context mesh
            form = context_retention.retention if split else chunkwise
            o, state = form(q, k, v, log_gate, cfg.chunk_size, cache.state)
            new_cache = RetentionState(state)

        o = RMSNorm(cfg.norm_eps, affine=False, name="subln")(o).reshape(b, t, dim)
        o = (nn.silu(gate.astype(jnp.float32)) * o.astype(jnp.float32)).astype(cfg.dtype)
        o = checkpoint_name(o, "mixer_out")
        out = dense(dim, "out_proj", xavier_uniform(2**-1), ("heads", "embed"))(o)
        return out, new_cache
