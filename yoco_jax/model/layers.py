"""Small linen layers shared by every model: Linear, RMSNorm, SwiGLU feed-forward, embedding.

Every parameter carries logical axis names (see yoco_jax.sharding) so one rules table places it.
Initializers follow the official code (kaiming-uniform(a=sqrt 5) by default).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, ArrayLike, Float, Int

from yoco_jax.model.rotary import apply_rotary

# torch's kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def xavier_uniform(gain: float):
    return nn.initializers.variance_scaling(gain**2, "fan_avg", "uniform")


class Linear(nn.Module):
    """y = x @ kernel, kernel `[in, out]` (the official weight transposed), no bias."""

    features: int
    axes: tuple[str | None, str | None]
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = default_init

    @nn.compact
    def __call__(self, x: Float[Array, "... In"]) -> Float[Array, "... Out"]:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class RMSNorm(nn.Module):
    """x / rms(x), computed in float32, cast back, then times a weight (none if not affine)."""

    eps: float
    affine: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        x32 = x.astype(jnp.float32)
        y = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)).astype(
            x.dtype
        )
        if not self.affine:
            return y
        weight = self.param(
            "weight",
            nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        return y * weight.astype(self.dtype)


class FeedForward(nn.Module):
    """SwiGLU: fc2(silu(fc1 x) * gate x)."""

    hidden_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        dense = lambda n, axes, name: Linear(n, axes, self.dtype, self.param_dtype, name=name)
        # remat names (model/block.py): the two projections, so a policy keeping them never
        # recomputes an FFN matmul (SwiGLU itself is cheap to redo)
        fc1 = checkpoint_name(dense(self.hidden_dim, ("embed", "mlp"), "fc1")(x), "mlp_hidden")
        gate = checkpoint_name(dense(self.hidden_dim, ("embed", "mlp"), "gate")(x), "mlp_hidden")
        h = nn.silu(fc1) * gate
        h = nn.with_logical_constraint(
            h, ("activation_batch", "activation_length", "activation_mlp")
        )
        return dense(x.shape[-1], ("mlp", "embed"), "fc2")(h)


class Embed(nn.Module):
    """Token embedding `[vocab, dim]`, scaled by sqrt(dim) as the official model does."""

    vocab_size: int
    dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: Int[ArrayLike, "B T"]) -> Float[Array, "B T D"]:
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.dim**-0.5), ("vocab", "embed")
            ),
            (self.vocab_size, self.dim),
            self.param_dtype,
        )
        x = jnp.take(table, tokens, axis=0).astype(jnp.float32)
        return (x * self.dim**0.5).astype(self.dtype)


def project_qkv(
    config,
    x: Float[Array, "B T D"],
    positions: Int[Array, "B T"],
    heads: int,
    kv_heads: int,
    head_dim: int,
    kernel_init: nn.initializers.Initializer = default_init,
) -> tuple[Float[Array, "B T H Dh"], Float[Array, "B T Hkv Dh"], Float[Array, "B T Hkv Dh"]]:
    """q_proj, k_proj (both with rotary) and v_proj of a mixer; call it inside a compact method
    so the three Linear layers become that mixer's submodules."""
    b, t, _ = x.shape
    kv_axes = ("embed", "heads" if kv_heads == heads else "kv_heads")

    def dense(features, axes, name):
        return Linear(features, axes, config.dtype, config.param_dtype, kernel_init, name=name)

    q = dense(heads * head_dim, ("embed", "heads"), "q_proj")(x).reshape(b, t, heads, head_dim)
    k = dense(kv_heads * head_dim, kv_axes, "k_proj")(x).reshape(b, t, kv_heads, head_dim)
    v = dense(kv_heads * head_dim, kv_axes, "v_proj")(x).reshape(b, t, kv_heads, head_dim)
    theta = config.rope_theta
    q, k = apply_rotary(q, positions, theta), apply_rotary(k, positions, theta)
    return tuple(checkpoint_name(a, "qkv") for a in (q, k, v))  # a remat name (model/block.py)
