"""Decode: ONE jitted `lax.while_loop` over tokens whose state (cache, next-token logits, output
buffer, per-row counts, done flags, keys) is an explicit pytree donated between calls, so
generation can also run in blocks of a few tokens (streaming) without recompiling. On a mesh
the state stays where inference/placement.py puts it (the K/V split along its length over
`context`: each step merges the devices' partial attention by log-sum-exp)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int

from yoco_jax.config import ModelConfig
from yoco_jax.inference import placement
from yoco_jax.inference.plan import bucket, check_positive
from yoco_jax.inference.sampling import Sampling, row_keys, sample
from yoco_jax.model import build_model
from yoco_jax.model.cache import Cache
from yoco_jax.model.handle import ModelHandle

GREEDY = Sampling()


class DecodeState(NamedTuple):
    """Everything the decode loop carries; B rows, an output buffer of N tokens."""

    cache: Cache
    logits: Float[Array, "B V"]  # float32 logits of each row's next token
    tokens: Int[Array, "B N"]  # generated tokens (stop token included), padded with 0
    n_out: Int[Array, " B"]  # tokens generated per row
    max_new: Int[Array, " B"]  # per-row budget (0 = a padding row)
    done: Bool[Array, " B"]
    keys: jax.Array  # [B] per-row PRNG keys


@functools.partial(jax.jit, static_argnames=("config", "greedy"), donate_argnames=("state",))
def _decode_loop(config: ModelConfig, greedy: bool, params, state: DecodeState, stop_ids, sampling,
                 steps):  # fmt: skip
    """Up to `steps` tokens for every live row (fewer when all rows finish)."""
    model = build_model(config)
    rows = jnp.arange(state.n_out.shape[0])
    buffer = state.tokens.shape[1]

    def body(carry):
        i, s = carry
        token = sample(s.logits, s.keys, s.n_out, sampling, greedy)
        live = ~s.done
        tokens = s.tokens.at[rows, jnp.where(live, s.n_out, buffer)].set(token, mode="drop")
        n_out = s.n_out + live
        stopped = jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
        done = s.done | stopped | (n_out >= s.max_new)
        feed = ~done  # the last token of a finished row is never fed: no cache room needed
        logits, cache = model.apply(
            {"params": params}, token[:, None], s.cache, feed.astype(jnp.int32), method="extend"
        )
        logits = jnp.where(feed[:, None], logits, s.logits)
        return i + 1, DecodeState(cache, logits, tokens, n_out, s.max_new, done, s.keys)

    cond = lambda carry: (carry[0] < steps) & ~jnp.all(carry[1].done)
    return placement.constrain(jax.lax.while_loop(cond, body, (jnp.int32(0), state))[1])


def start_decode(
    logits, cache: Cache, max_new_tokens, seed: int = 0, buffer: int | None = None
) -> DecodeState:
    """The decode state after a prefill: `max_new_tokens` an int or one per row (0 = skip the
    row), an output buffer of `buffer` tokens (default: the largest budget)."""
    b = cache.lengths.shape[0]
    max_new = np.broadcast_to(np.asarray(max_new_tokens, np.int32), (b,))
    if (max_new < 0).any():
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    buffer = buffer or max(int(max_new.max()), 1)
    # The last new token is returned, never fed back: it needs no cache position.
    need = np.asarray(cache.lengths) + np.maximum(max_new - 1, 0)
    if need.max() > cache.max_len:
        raise ValueError(
            f"prompt + max_new_tokens - 1 (the last new token takes no cache position) reaches "
            f"{int(need.max())} positions, beyond the cache's {cache.max_len}: pass a "
            "larger max_len or fewer max_new_tokens"
        )
    return DecodeState(
        cache=cache,
        logits=jnp.asarray(logits, jnp.float32),
        tokens=jnp.zeros((b, buffer), jnp.int32),
        n_out=jnp.zeros((b,), jnp.int32),
        max_new=jnp.asarray(max_new),
        done=jnp.asarray(max_new == 0),
        keys=row_keys(seed, b),
    )


def stop_array(stop_ids: Sequence[int]) -> np.ndarray:
    """Stop ids padded with -1 to a power of two (>= 4), so few lengths ever compile."""
    ids = np.full((bucket(len(stop_ids), (), 4),), -1, np.int32)
    ids[: len(stop_ids)] = list(stop_ids)
    return ids


def decode(
    model: ModelHandle,
    state: DecodeState,
    *,
    steps: int | None = None,
    sampling: Sampling = GREEDY,
    stop_ids: Sequence[int] = (),
    mesh: Mesh | None = None,
) -> DecodeState:
    """Runs the jitted loop for up to `steps` tokens (default: until every row is done).

    `state` is donated: use the returned one. Sampling knobs are traced, so changing them (or
    `steps`) never recompiles; greedy (temperature 0) vs sampling is the one static switch.
    `mesh`: where to decode; default the mesh the state's cache lives on (a cache from
    `prefill(..., mesh=...)`), else no mesh.
    """
    steps = state.tokens.shape[1] if steps is None else steps
    check_positive("steps", steps)
    mesh = placement.mesh_of(state.cache) if mesh is None else mesh
    placement.check_mesh(model.config, mesh)
    placement.check_rows(state.n_out.shape[0], mesh, "the decode state's rows")
    if placement.context_size(mesh) > 1 and state.cache.max_len % mesh.shape["context"]:
        raise ValueError(
            f"a cache of {state.cache.max_len} positions does not split over the context axis "
            f"of size {mesh.shape['context']}: grow it to a multiple (grow_cache)"
        )
    params = placement.place_params(model.config, model.params, mesh)
    with placement.use(mesh):
        return _decode_loop(
            model.config, sampling.greedy, params, placement.place(state, mesh),
            stop_array(stop_ids), sampling, jnp.int32(steps),
        )  # fmt: skip
