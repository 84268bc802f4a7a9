"""Next-token sampling: greedy, temperature, top-k, top-p; seeded per sequence.

The sampling knobs are traced arrays (not static), so one compiled decode loop serves every
temperature / top-k / top-p; only greedy vs sampling is a static choice (greedy skips the sort).
Each sequence draws from its own key folded with its step, so a sequence's samples do not
depend on which other sequences share its batch, nor on padding.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int


class Sampling(NamedTuple):
    """temperature 0 = greedy; top_k 0 = all tokens; top_p 1.0 = no nucleus cut."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @classmethod
    def checked(cls, temperature=0.0, top_k=None, top_p=None) -> Sampling:
        """Validates user values (None = off) and gives a Sampling, or a clear error."""
        top_k = 0 if top_k is None else top_k
        top_p = 1.0 if top_p is None else top_p
        if not temperature >= 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k={top_k!r} must be a positive integer or None (no cut)")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p} must lie in (0, 1] (1 or None = no cut)")
        return cls(float(temperature), top_k, float(top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(
    logits: Float[Array, "B V"], top_k: Int[ArrayLike, "*r"], top_p: Float[ArrayLike, "*r"]
) -> Float[Array, "B V"]:
    """Logits with every token outside the top-k and the top-p nucleus set to -inf; top_k and
    top_p: scalars, or one per row ([B, 1], the server's slots).

    Tokens tied with the last kept one are kept too. The most likely token always survives.
    """
    vocab = logits.shape[-1]
    ranked = -jnp.sort(-logits, axis=-1)  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    in_top_k = jnp.arange(vocab) < k
    probs = jax.nn.softmax(jnp.where(in_top_k, ranked, -jnp.inf), axis=-1)
    # Keep a ranked token while the mass before it is < top_p: the smallest set reaching top_p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = in_top_k & ((mass_before < top_p) | (top_p >= 1.0))  # 1.0: no cut despite rounding
    n_keep = jnp.maximum(keep.sum(axis=-1, keepdims=True), 1)
    threshold = jnp.take_along_axis(ranked, n_keep - 1, axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample(
    logits: Float[Array, "B V"],
    keys: jax.Array,
    steps: Int[Array, " B"],
    sampling: Sampling,
    greedy: bool,
) -> Int[Array, " B"]:
    """One token per row. `keys` [B] are the rows' keys, `steps` [B] fold in the step index."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    temperature = jnp.maximum(jnp.asarray(sampling.temperature, jnp.float32), 1e-6)
    scaled = filter_logits(logits / temperature, sampling.top_k, sampling.top_p)
    step_keys = jax.vmap(jax.random.fold_in)(keys, steps)
    return jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)


def row_keys(seed: int, n: int) -> jax.Array:
    """One key per sequence: sequence i of a request with `seed` always draws from the same key."""
    check_seed(seed)
    base = jax.random.key(int(seed))
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n))


def check_seed(seed) -> None:
    """Raises unless `seed` is an integer that fits PRNG seeding (64 bits)."""
    ok = not isinstance(seed, bool) and hasattr(seed, "__index__")  # ints and numpy ints
    if not ok or not -(2**63) <= int(seed) < 2**63:
        raise ValueError(f"seed={seed!r} must be an integer in [-2**63, 2**63) (a 64-bit seed)")
