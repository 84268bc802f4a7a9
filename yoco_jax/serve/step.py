"""The serving engine's jitted pieces: one batched decode state of S slots, the insert of a
prefilled row into a slot, and a decode block of a few tokens over every live slot.

The slot index, the budgets and the sampling settings are traced arrays, so inserting into any
slot and mixing greedy with sampled rows never recompiles; `insert_row` compiles once per row
cache length (a prompt-length rung) and `decode_block` once.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from yoco_jax.config import ModelConfig
from yoco_jax.inference.sampling import Sampling, sample
from yoco_jax.model import build_model, init_cache


class SlotState(NamedTuple):
    """Everything the decode blocks carry for S slots (rows)."""

    cache: object  # YOCOCache or TransformerCache: S rows of max_len positions
    logits: Float[Array, "S V"]  # float32 logits of each row's next token
    n_out: Int[Array, " S"]  # tokens the row's request has generated (its sampling step)
    max_new: Int[Array, " S"]  # the request's budget
    done: Bool[Array, " S"]  # a stop token or the budget was reached
    keys: jax.Array  # [S] per-row PRNG keys
    temperature: Float[Array, " S"]  # 0 = greedy
    top_k: Int[Array, " S"]  # 0 = no cut
    top_p: Float[Array, " S"]  # 1 = no cut


def init_slots(config: ModelConfig, slots: int, max_len: int) -> SlotState:
    """S empty (done) slots over a cache of `max_len` positions each."""
    zeros = lambda dtype: jnp.zeros((slots,), dtype)
    return SlotState(
        cache=init_cache(config, slots, max_len),
        logits=jnp.zeros((slots, config.vocab_size), jnp.float32),
        n_out=zeros(jnp.int32),
        max_new=zeros(jnp.int32),
        done=jnp.ones((slots,), bool),
        keys=jax.random.split(jax.random.key(0), slots),
        temperature=zeros(jnp.float32),
        top_k=zeros(jnp.int32),
        top_p=jnp.ones((slots,), jnp.float32),
    )


def request_key(seed: int) -> jax.Array:
    """The key `generate(..., seed=seed)` gives its first prompt, so a lone sampled request
    draws the same tokens here as there."""
    return jax.random.fold_in(jax.random.key(seed), 0)


def _put_row(big: jax.Array, row: jax.Array, slot) -> jax.Array:
    """Writes a one-row leaf into row `slot` of `big`, zero-padding it first where it is shorter
    (the row's K/V has a rung's length, the slots' K/V has max_len)."""
    pad = [(0, 0)] + [(0, b - r) for b, r in zip(big.shape[1:], row.shape[1:])]  # not the rows
    row = jnp.pad(row.astype(big.dtype), pad)
    return jax.lax.dynamic_update_slice(big, row, (slot,) + (0,) * (big.ndim - 1))


@functools.partial(jax.jit, donate_argnames=("state",))
def insert_row(
    state: SlotState, row_cache, row_logits, slot, max_new, temperature, top_k, top_p, key
) -> SlotState:
    """The state with a one-row prefilled cache (and its last logits [1, V]) in row `slot`,
    ready to decode up to `max_new` tokens with the given sampling settings and key."""
    put = lambda value, old: old.at[slot].set(jnp.asarray(value, old.dtype))
    return SlotState(
        cache=jax.tree.map(lambda big, row: _put_row(big, row, slot), state.cache, row_cache),
        logits=_put_row(state.logits, row_logits.astype(jnp.float32), slot),
        n_out=state.n_out.at[slot].set(0),
        max_new=put(max_new, state.max_new),
        done=state.done.at[slot].set(max_new <= 0),
        keys=state.keys.at[slot].set(key),
        temperature=put(temperature, state.temperature),
        top_k=put(top_k, state.top_k),
        top_p=put(top_p, state.top_p),
    )


def pick(s: SlotState) -> Int[Array, " S"]:
    """One token per row: argmax where temperature is 0, else a sample under the row's own
    temperature / top-k / top-p from its key folded with its step (as `generate` draws)."""
    greedy = jnp.argmax(s.logits, axis=-1).astype(jnp.int32)

    def sampled():
        sampling = Sampling(s.temperature[:, None], s.top_k[:, None], s.top_p[:, None])
        return jnp.where(s.temperature == 0, greedy, sample(s.logits, s.keys, s.n_out,
                                                            sampling, greedy=False))  # fmt: skip

    # The sort behind top-k / top-p runs only when some live row samples.
    return jax.lax.cond(jnp.any((s.temperature > 0) & ~s.done), sampled, lambda: greedy)


@functools.partial(jax.jit, static_argnames=("config", "steps"), donate_argnames=("state",))
def decode_block(
    config: ModelConfig, params, state: SlotState, active, stop_ids, steps: int
) -> tuple[SlotState, Int[Array, "S steps"]]:
    """Up to `steps` tokens for every active row that is not done (fewer when all finish).

    active [S] bool: the slots the host holds requests in. Returns the state and the new
    tokens [S, steps] (-1 where a row produced none).
    """
    model = build_model(config)
    state = state._replace(done=state.done | ~active)
    out = jnp.full((active.shape[0], steps), -1, jnp.int32)

    def body(carry):
        i, s, out = carry
        token = pick(s)
        live = ~s.done
        out = out.at[:, i].set(jnp.where(live, token, -1))
        n_out = s.n_out + live
        stopped = jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
        done = s.done | stopped | (n_out >= s.max_new)
        feed = ~done  # a finished row's last token is never fed: no cache room needed
        logits, cache = model.apply(
            {"params": params}, token[:, None], s.cache, feed.astype(jnp.int32), method="extend"
        )
        logits = jnp.where(feed[:, None], logits, s.logits)
        return i + 1, s._replace(cache=cache, logits=logits, n_out=n_out, done=done), out

    cond = lambda carry: (carry[0] < steps) & ~jnp.all(carry[1].done)
    _, state, out = jax.lax.while_loop(cond, body, (jnp.int32(0), state, out))
    return state, out
