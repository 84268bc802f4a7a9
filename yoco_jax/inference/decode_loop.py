"""Decode: ONE step (sample, write, stop test, feed the token back through `extend`) inside ONE
jitted `lax.while_loop`, used by `generate` and by the server's engine alike. Its state (cache,
next-token logits, output ring, per-row counts, budgets, done flags, keys and sampling
settings) is an explicit pytree donated between calls, so generation can also run in blocks of
a few tokens (streaming, continuous batching) without recompiling. On a mesh the state stays
where inference/placement.py puts it (the K/V split along its length over `context`: each
step merges the devices' partial attention by log-sum-exp)."""

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
from yoco_jax.model import build_model, init_cache
from yoco_jax.model.cache import Cache
from yoco_jax.model.handle import ModelHandle

GREEDY = Sampling()


class DecodeState(NamedTuple):
    """Everything the decode loop carries for B rows; an output ring of N tokens."""

    cache: Cache
    logits: Float[Array, "B V"]  # float32 logits of each row's next token
    tokens: Int[Array, "B N"]  # token j of a row at j % N (a buffer when N >= the budget)
    n_out: Int[Array, " B"]  # tokens generated per row (also the row's sampling step)
    max_new: Int[Array, " B"]  # per-row budget (0 = a padding or empty row)
    done: Bool[Array, " B"]
    keys: jax.Array  # [B] per-row PRNG keys
    temperature: Float[Array, " B"]  # 0 = greedy
    top_k: Int[Array, " B"]  # 0 = no cut
    top_p: Float[Array, " B"]  # 1 = no cut
    # Log-probs (the model's own distribution, before sampling settings) of each token in the
    # ring and its K most likely alternatives; rings of width 0 when not asked for.
    logprobs: Float[Array, "B M"]
    top_ids: Int[Array, "B M K"]
    top_logprobs: Float[Array, "B M K"]


def pick(s: DecodeState) -> Int[Array, " B"]:
    """One token per row: argmax where temperature is 0, else a sample under the row's own
    temperature / top-k / top-p from its key folded with its step."""
    greedy = jnp.argmax(s.logits, axis=-1).astype(jnp.int32)

    def sampled():
        sampling = Sampling(s.temperature[:, None], s.top_k[:, None], s.top_p[:, None])
        drawn = sample(s.logits, s.keys, s.n_out, sampling, greedy=False)
        return jnp.where(s.temperature == 0, greedy, drawn)

    # The sort behind top-k / top-p runs only when some live row samples.
    return jax.lax.cond(jnp.any((s.temperature > 0) & ~s.done), sampled, lambda: greedy)


def decode_step(model, params, s: DecodeState, stop_ids) -> DecodeState:
    """THE decode step: every live row picks a token, writes it to its ring, stops at a stop id
    or its budget, and (unless it just finished) feeds the token back through `extend`."""
    rows = jnp.arange(s.n_out.shape[0])
    ring = s.tokens.shape[1]
    token = pick(s)
    live = ~s.done
    tokens = s.tokens.at[rows, jnp.where(live, s.n_out % ring, ring)].set(token, mode="drop")
    n_out = s.n_out + live
    if s.logprobs.shape[1]:  # static: only states that asked for log-probs pay for them
        at = (rows, jnp.where(live, s.n_out % ring, ring))
        logp = jax.nn.log_softmax(s.logits, axis=-1)
        top_logp, top_ids = jax.lax.top_k(logp, s.top_ids.shape[2])
        chosen = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
        s = s._replace(
            logprobs=s.logprobs.at[at].set(chosen, mode="drop"),
            top_ids=s.top_ids.at[at].set(top_ids.astype(jnp.int32), mode="drop"),
            top_logprobs=s.top_logprobs.at[at].set(top_logp, mode="drop"),
        )
    stopped = jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
    done = s.done | stopped | (n_out >= s.max_new)
    feed = ~done  # the last token of a finished row is never fed: no cache room needed
    logits, cache = model.apply(
        {"params": params}, token[:, None], s.cache, feed.astype(jnp.int32), method="extend"
    )
    logits = jnp.where(feed[:, None], logits, s.logits)
    return s._replace(cache=cache, logits=logits, tokens=tokens, n_out=n_out, done=done)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("state",))
def decode_loop(config: ModelConfig, params, state: DecodeState, stop_ids, steps) -> DecodeState:
    """Up to `steps` decode steps for every live row (fewer when all rows finish)."""
    model = build_model(config)

    def body(carry):
        i, s = carry
        return i + 1, decode_step(model, params, s, stop_ids)

    cond = lambda carry: (carry[0] < steps) & ~jnp.all(carry[1].done)
    return placement.constrain(jax.lax.while_loop(cond, body, (jnp.int32(0), state))[1])


def start_decode(
    logits,
    cache: Cache,
    max_new_tokens,
    seed: int = 0,
    buffer: int | None = None,
    sampling: Sampling = GREEDY,
    max_len: int | None = None,
    logprobs: int | None = None,
) -> DecodeState:
    """The decode state after a prefill: `max_new_tokens` an int or one per row (0 = skip the
    row), an output ring of `buffer` tokens (default: the largest budget, so nothing wraps),
    `sampling` for every row and row i drawing from key i of `seed`. `max_len`: the cache
    positions the rows will decode in (default the cache's; more for a row prefilled at a
    shorter length and then inserted into a batch, `insert_row`). `logprobs`: None, or record
    each new token's log-prob and its `logprobs` most likely alternatives (0 to 20)."""
    b = cache.lengths.shape[0]
    max_new = np.broadcast_to(np.asarray(max_new_tokens, np.int32), (b,))
    if (max_new < 0).any():
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    buffer = buffer or max(int(max_new.max()), 1)
    check_room(np.asarray(cache.lengths), max_new, max_len or cache.max_len)
    if logprobs is not None and not 0 <= logprobs <= 20:
        raise ValueError(f"logprobs={logprobs} must lie in [0, 20] (or None: not recorded)")
    setting = lambda value, dtype: jnp.full((b,), value, dtype)
    m, k = (0, 0) if logprobs is None else (buffer, max(logprobs, 1))
    return DecodeState(
        cache=cache,
        logits=jnp.asarray(logits, jnp.float32),
        tokens=jnp.zeros((b, buffer), jnp.int32),
        n_out=jnp.zeros((b,), jnp.int32),
        max_new=jnp.asarray(max_new),
        done=jnp.asarray(max_new == 0),
        keys=row_keys(seed, b),
        temperature=setting(sampling.temperature, jnp.float32),
        top_k=setting(sampling.top_k, jnp.int32),
        top_p=setting(sampling.top_p, jnp.float32),
        logprobs=jnp.zeros((b, m), jnp.float32),
        top_ids=jnp.zeros((b, m, k), jnp.int32),
        top_logprobs=jnp.zeros((b, m, k), jnp.float32),
    )


def idle_state(
    config: ModelConfig, rows: int, max_len: int, buffer: int, logprobs: int | None = None
) -> DecodeState:
    """A decode state of `rows` done rows over empty caches of `max_len` positions (slots that
    `insert_row` fills: a server's batch)."""
    logits = np.zeros((rows, config.vocab_size), np.float32)
    cache = init_cache(config, rows, max_len)
    return start_decode(logits, cache, 0, buffer=buffer, logprobs=logprobs)


def check_room(used, max_new, max_len: int, limit: str = "the cache's max_len") -> None:
    """THE room rule: the last new token is returned, never fed back, so a row needs
    used + max_new - 1 cache positions (used: tokens already in the cache)."""
    need = np.asarray(used) + np.maximum(np.asarray(max_new) - 1, 0)
    if need.max(initial=0) > max_len:
        raise ValueError(
            f"prompt + max_new_tokens - 1 (the last new token takes no cache position) reaches "
            f"{int(need.max())} positions, beyond {limit} {max_len}: shorten the prompt, "
            f"ask for fewer new tokens or raise {limit.split()[-1]}"
        )


def stop_array(stop_ids: Sequence[int]) -> np.ndarray:
    """Stop ids padded with -1 to a power of two (>= 4), so few lengths ever compile."""
    ids = np.full((bucket(len(stop_ids), (), 4),), -1, np.int32)
    ids[: len(stop_ids)] = list(stop_ids)
    return ids


def ring_slice(ring: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Entries start..stop-1 of one row's ring [N, ...] (host side): tokens or log-probs."""
    return ring[np.arange(start, stop) % ring.shape[0]]


def decode(
    model: ModelHandle,
    state: DecodeState,
    *,
    steps: int | None = None,
    stop_ids: Sequence[int] = (),
    mesh: Mesh | None = None,
    placed: bool = False,
) -> DecodeState:
    """Runs the jitted loop for up to `steps` tokens (default: the ring's length).

    `state` is donated: use the returned one. Sampling settings live in the state (per row,
    traced), so changing them (or `steps`) never recompiles. `mesh`: where to decode; default
    the mesh the state's cache lives on (a cache from `prefill(..., mesh=...)`), else no mesh.
    `placed=True` says the caller already checked and placed model and state on `mesh` (a
    loop over blocks validates once).
    """
    steps = state.tokens.shape[1] if steps is None else steps
    check_positive("steps", steps)
    mesh = placement.mesh_of(state.cache) if mesh is None else mesh
    params = model.params
    if not placed:
        check_decode_mesh(model.config, state, mesh)
        params = placement.place_params(model.config, model.params, mesh)
        state = placement.place(state, mesh)
    with placement.use(mesh):
        return decode_loop(model.config, params, state, stop_array(stop_ids), jnp.int32(steps))


def check_decode_mesh(config: ModelConfig, state: DecodeState, mesh: Mesh | None) -> None:
    """Refuses a decode state that does not split over `mesh`, naming the fix."""
    placement.check_mesh(config, mesh)
    placement.check_rows(state.n_out.shape[0], mesh, "the decode state's rows")
    if placement.context_size(mesh) > 1 and state.cache.max_len % mesh.shape["context"]:
        raise ValueError(
            f"a cache of {state.cache.max_len} positions does not split over the context axis "
            f"of size {mesh.shape['context']}: resize it to a multiple (resize_cache)"
        )


def _put_row(big: jax.Array, row: jax.Array, slot) -> jax.Array:
    """Writes a one-row leaf into row `slot` of `big`, zero-padding it first where it is shorter
    (a row's K/V may hold fewer positions than the batch's)."""
    pad = [(0, 0)] + [(0, b - r) for b, r in zip(big.shape[1:], row.shape[1:])]  # not the rows
    if any(p for _, p in pad):
        row = jnp.pad(row.astype(big.dtype), pad)
    return jax.lax.dynamic_update_slice(big, row, (slot,) + (0,) * (big.ndim - 1))


@functools.partial(jax.jit, donate_argnames=("state",))
def insert_row(state: DecodeState, row: DecodeState, slot) -> DecodeState:
    """`state` with the one-row decode state `row` (from `start_decode` after a one-row
    prefill) in row `slot` (traced: any slot, one compilation per row cache length)."""
    return jax.tree.map(lambda big, one: _put_row(big, one, slot), state, row)


def finish_rows(state: DecodeState, rows: np.ndarray) -> DecodeState:
    """`state` with `rows` (bool [B]) marked done: the host ended them (a stop string, a
    cancelled request); they take no more steps."""
    return state._replace(done=state.done | jnp.asarray(rows))
