"""Batched generation: bucketed shapes, chunked prefill, and one jitted decode loop.

- `prefill` runs prompts through `extend` chunk by chunk (activation memory bounded by a chunk;
  the global K/V written once; YOCO's cross-decoder runs only at each chunk's last token).
- `decode` is ONE jitted `lax.while_loop` over tokens whose state (cache, next-token logits,
  output buffer, per-row counts, done flags, keys) is an explicit pytree donated between calls,
  so generation can also run in blocks of a few tokens (streaming) without recompiling.
- `generate` pads the batch, the prompt length and the cache length to buckets (powers of two
  or a ladder), so a stream of requests compiles a bounded number of times.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from yoco_jax.config import ModelConfig
from yoco_jax.data.tokenizer_resolver import check_tokenizer
from yoco_jax.inference.sampling import Sampling, check_seed, row_keys, sample
from yoco_jax.model import build_model, init_cache
from yoco_jax.model.cache import grow_cache
from yoco_jax.model.handle import ModelHandle

DEFAULT_PREFILL_CHUNK = 4096
GREEDY = Sampling()


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Shape ladders; a size goes to the smallest rung that holds it, past the last rung (or
    with no ladder) to the next power of two, never below `min_length`."""

    batch: tuple[int, ...] = ()
    length: tuple[int, ...] = ()
    min_length: int = 16

    def batch_size(self, n: int) -> int:
        return _bucket(n, self.batch, 1)

    def seq_len(self, n: int) -> int:
        return _bucket(n, self.length, self.min_length)


def _bucket(n: int, ladder: Sequence[int], minimum: int) -> int:
    for rung in sorted(ladder):
        if rung >= n:
            return rung
    return max(minimum, 1 << max(n - 1, 0).bit_length())


class DecodeState(NamedTuple):
    """Everything the decode loop carries; B rows, an output buffer of N tokens."""

    cache: object  # YOCOCache or TransformerCache
    logits: Float[Array, "B V"]  # float32 logits of each row's next token
    tokens: Int[Array, "B N"]  # generated tokens (stop token included), padded with 0
    n_out: Int[Array, " B"]  # tokens generated per row
    max_new: Int[Array, " B"]  # per-row budget (0 = a padding row)
    done: Bool[Array, " B"]
    keys: jax.Array  # [B] per-row PRNG keys


@dataclasses.dataclass
class Completion:
    """One prompt's continuation: tokens without the stop token, text when a tokenizer is
    known, finish_reason "stop" (a stop token) or "length" (max_new_tokens)."""

    tokens: list[int]
    text: str | None
    finish_reason: str


# --- jitted pieces (config static; arrays traced; caches donated) ---------------------------


@functools.partial(jax.jit, static_argnames=("config", "fresh"), donate_argnames=("cache", "last"))
def _prefill_chunk(config: ModelConfig, params, tokens, n_new, cache, last, fresh: bool):
    """extend over one chunk; rows with no new token keep their previous last logits."""
    logits, cache = build_model(config).apply(
        {"params": params}, tokens, cache, n_new, fresh=fresh, method="extend"
    )
    return jnp.where((n_new > 0)[:, None], logits, last), cache


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
    return jax.lax.while_loop(cond, body, (jnp.int32(0), state))[1]


# --- host-side entry points --------------------------------------------------------------


def _pad_prompts(prompts: Sequence[Sequence[int]], rows: int, width: int):
    tokens = np.zeros((rows, width), np.int32)
    lengths = np.zeros((rows,), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
        lengths[i] = len(p)
    return tokens, lengths


def _check_prompts(model: ModelHandle, prompts: Sequence[Sequence[int]]) -> None:
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: give at least one token")
        model.check_tokens(np.asarray([p]))


def check_positive(name: str, value) -> None:
    """Raises unless `value` is a positive integer (a chunk, block or step count)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def prefill_tokens(
    model: ModelHandle,
    tokens: np.ndarray,
    lengths: np.ndarray,
    cache=None,
    *,
    max_len: int | None = None,
    chunk_size: int = DEFAULT_PREFILL_CHUNK,
):
    """Right-padded int tokens [B, P] (lengths[b] real ones, 0 allowed) -> (logits [B, V], cache).

    Without `cache`, a fresh one of `max_len` positions (default P) is made. P need not be a
    multiple of `chunk_size`: a shorter last chunk costs one more compilation.
    """
    check_positive("chunk_size", chunk_size)
    cfg = model.config
    b, p = tokens.shape
    if cache is None:
        cache = init_cache(cfg, b, max_len or p)
        fresh = True
    else:
        fresh = False
    room = cache.max_len
    used = np.asarray(cache.lengths) + lengths
    if used.max(initial=0) > room:
        raise ValueError(
            f"prompt needs {int(used.max())} cache positions but the cache holds {room}: "
            "pass a larger max_len"
        )
    last = jnp.zeros((b, cfg.vocab_size), jnp.float32)
    for start in range(0, max(p, 1), chunk_size):
        chunk = tokens[:, start : start + chunk_size]
        n_new = np.clip(lengths - start, 0, chunk.shape[1]).astype(np.int32)
        last, cache = _prefill_chunk(cfg, model.params, chunk, n_new, cache, last, fresh)
        fresh = False
    return last, cache


def prefill(
    model: ModelHandle,
    prompts,
    *,
    cache=None,
    max_len: int | None = None,
    chunk_size: int = DEFAULT_PREFILL_CHUNK,
    tokenizer=None,
    buckets: Buckets = Buckets(),
):
    """Prompts (token lists or strings) -> (last-position logits [B, V], cache).

    With `cache` (e.g. a loaded document), the prompts continue it (one per cache row); without,
    a fresh cache of `max_len` positions (default: the longest prompt's bucket). The prompt
    width is padded to a bucket, then to a multiple of the chunk, so chunks share one shape.
    """
    check_positive("chunk_size", chunk_size)
    token_lists, _ = as_token_lists(prompts, tokenizer or model.tokenizer)
    _check_prompts(model, token_lists)
    if cache is not None and len(token_lists) != cache.lengths.shape[0]:
        raise ValueError(
            f"{len(token_lists)} prompts for a cache of {cache.lengths.shape[0]} rows: "
            "give one prompt per cache row"
        )
    longest = max(len(p) for p in token_lists)
    width = buckets.seq_len(longest)
    chunk = min(chunk_size, width)
    width = -(-width // chunk) * chunk
    tokens, lengths = _pad_prompts(token_lists, len(token_lists), width)
    if cache is None:
        max_len = max_len or buckets.seq_len(longest)
        if longest > max_len:
            raise ValueError(
                f"prompt of {longest} tokens is longer than the context max_len={max_len}"
            )
    return prefill_tokens(model, tokens, lengths, cache, max_len=max_len, chunk_size=chunk)


def start_decode(
    logits, cache, max_new_tokens, seed: int = 0, buffer: int | None = None
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
    ids = np.full((_bucket(len(stop_ids), (), 4),), -1, np.int32)
    ids[: len(stop_ids)] = list(stop_ids)
    return ids


def decode(
    model: ModelHandle,
    state: DecodeState,
    *,
    steps: int | None = None,
    sampling: Sampling = GREEDY,
    stop_ids: Sequence[int] = (),
) -> DecodeState:
    """Runs the jitted loop for up to `steps` tokens (default: until every row is done).

    `state` is donated: use the returned one. Sampling knobs are traced, so changing them (or
    `steps`) never recompiles; greedy (temperature 0) vs sampling is the one static switch.
    """
    steps = state.tokens.shape[1] if steps is None else steps
    check_positive("steps", steps)
    return _decode_loop(
        model.config, sampling.greedy, model.params, state, stop_array(stop_ids), sampling,
        jnp.int32(steps),
    )  # fmt: skip


def as_token_lists(prompts, tokenizer=None, add_bos: bool = False):
    """(list of token lists, single) from a string, a token list, or a list of either."""
    single = isinstance(prompts, str) or (
        len(prompts) > 0 and all(isinstance(t, (int, np.integer)) for t in prompts)
    )
    items = [prompts] if single else list(prompts)
    if not items:
        raise ValueError("no prompts given")
    out = []
    for item in items:
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError(
                    "string prompts need a tokenizer: pass tokenizer=Tokenizer.load(path) (the "
                    "model carries none), or give token id lists"
                )
            out.append(tokenizer.encode(item, bos=add_bos))
        else:
            out.append(_token_ids(item))
    return out, single


def _token_ids(item) -> list[int]:
    """One prompt's token ids; floats, bools, strings and nested lists are errors, not coerced."""
    ints = isinstance(item, (list, tuple, np.ndarray)) and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in item
    )
    if not ints:
        raise ValueError(
            f"prompt {item!r:.80} must be a string or a flat list of integer token ids"
        )
    return [int(t) for t in item]


def resolve_stop(stop, tokenizer) -> tuple[list[int], list[str]]:
    """(stop ids, stop strings): the tokenizer's EOS (when known) plus `stop`'s ids; `stop`'s
    strings (any number of tokens) are matched in the decoded text, so they need a tokenizer."""
    ids = [] if tokenizer is None else [tokenizer.eos_id]
    texts = []
    for s in [] if stop is None else [stop] if isinstance(stop, (str, int)) else stop:
        if isinstance(s, str):
            if not s:
                raise ValueError("a stop string is empty: give non-empty strings or token ids")
            if tokenizer is None:
                raise ValueError(
                    f"stop string {s!r} needs a tokenizer to match the text: pass tokenizer= "
                    "or give token ids"
                )
            texts.append(s)
        else:
            ids.append(int(s))
    return sorted(set(ids)), sorted(set(texts))


def find_stop(text: str, stop_texts: Sequence[str]) -> int | None:
    """Where the first stop string starts in `text` (None when none occurs)."""
    hits = [i for i in (text.find(s) for s in stop_texts) if i >= 0]
    return min(hits) if hits else None


def _rows_at_stop(out, n_out, done, stop_texts, tokenizer) -> np.ndarray:
    """bool [B]: live rows whose text so far holds a stop string."""
    return np.array([
        not done[i] and find_stop(tokenizer.decode(out[i, : n_out[i]].tolist()), stop_texts)
        is not None for i in range(len(done))
    ])  # fmt: skip


def _cut_at_stop(tokens: list[int], text: str, cut: int, tokenizer) -> tuple[list[int], str]:
    """(the longest token prefix whose text lies before the stop string, text[:cut])."""
    text = text[:cut]
    n = len(tokens)
    while n and not text.startswith(tokenizer.decode(tokens[:n])):
        n -= 1
    return tokens[:n], text


def generate(
    model: ModelHandle,
    prompts,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop=None,
    seed: int = 0,
    *,
    max_len: int | None = None,
    cache=None,
    tokenizer=None,
    add_bos: bool = False,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    buckets: Buckets = Buckets(),
    on_tokens: Callable[[list[list[int]]], None] | None = None,
    block: int = 8,
) -> Completion | list[Completion]:
    """Continues each prompt by up to `max_new_tokens` tokens.

    prompts: a string, a token list, or a list of either (strings need the model's tokenizer or
    `tokenizer`). Sampling: temperature 0 = greedy; top_k / top_p cut the distribution;
    `seed` makes it reproducible (prompt i always draws from the same stream). stop: token ids
    and/or strings, besides the tokenizer's EOS; a string (any number of tokens, e.g. "\\n\\n")
    is matched in the text decoded every `block` tokens, and the completion ends before it
    (text cut there; tokens: those wholly before it; on_tokens may have seen a few more).
    `cache`: continue a prefilled cache
    (e.g. from load_cache; it is copied, not consumed), one prompt per row. `max_len`: the
    context (cache positions); default the bucket of the longest prompt + max_new_tokens.
    `on_tokens(new_tokens_per_row)` streams: the loop then runs in jitted blocks of `block`.
    Returns one Completion per prompt (a single one for a single prompt).
    """
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is not None:  # before any work: a wrong one fails only when decoding
        check_tokenizer(tokenizer, model.config.vocab_size)
    check_positive("prefill_chunk", prefill_chunk)
    check_positive("block", block)
    check_seed(seed)
    token_lists, single = as_token_lists(prompts, tokenizer, add_bos)
    _check_prompts(model, token_lists)
    sampling = Sampling.checked(temperature, top_k, top_p)
    stop_ids, stop_texts = resolve_stop(stop, tokenizer)
    outside = [i for i in stop_ids if not 0 <= i < model.config.vocab_size]
    if outside:
        raise ValueError(
            f"stop ids {outside} lie outside the vocabulary [0, {model.config.vocab_size}): "
            "give ids the model can produce"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    n = len(token_lists)
    longest = max(len(p) for p in token_lists)

    if cache is None:
        rows = buckets.batch_size(n)
        context = max_len or buckets.seq_len(longest + max_new_tokens)
        if longest + max_new_tokens - 1 > context:  # the last new token needs no position
            raise ValueError(
                f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} - 1 (the last new "
                f"token takes no cache position) does not fit the context max_len={context}: "
                "shorten the prompt or raise max_len"
            )
    else:
        rows = cache.lengths.shape[0]
        if n != rows:
            raise ValueError(f"{n} prompts for a cache of {rows} rows: give one per cache row")
        need = int(np.max(np.asarray(cache.lengths)[:n] + [len(p) for p in token_lists]))
        need += max_new_tokens - 1  # the last new token needs no cache position
        cache = jax.tree.map(jnp.copy, cache)  # the caller's cache stays usable
        if need > cache.max_len:
            cache = grow_cache(cache, max_len or buckets.seq_len(need))

    width = buckets.seq_len(longest)
    chunk = min(prefill_chunk, width)
    width = -(-width // chunk) * chunk
    tokens, lengths = _pad_prompts(token_lists, rows, width)
    if cache is None:
        cache = init_cache(model.config, rows, context)
    logits, cache = prefill_tokens(model, tokens, lengths, cache, chunk_size=chunk)
    budget = np.where(np.arange(rows) < n, max_new_tokens, 0)
    state = start_decode(logits, cache, budget, seed, buckets.seq_len(max_new_tokens))

    if on_tokens is None and not stop_texts:
        state = decode(model, state, sampling=sampling, stop_ids=stop_ids)
    else:  # blocks of `block` tokens: stream them, and end rows whose text holds a stop string
        shown = np.zeros((n,), np.int64)
        while True:
            state = decode(model, state, steps=block, sampling=sampling, stop_ids=stop_ids)
            out, n_out, done = jax.device_get((state.tokens, state.n_out, state.done))
            if on_tokens is not None:
                on_tokens([out[i, shown[i] : n_out[i]].tolist() for i in range(n)])
            shown = n_out[:n].astype(np.int64)
            if stop_texts:
                hit = _rows_at_stop(out, n_out, done, stop_texts, tokenizer)
                state = state._replace(done=state.done | hit) if hit.any() else state
                done = done | hit
            if done.all():
                break

    out, n_out = jax.device_get((state.tokens, state.n_out))
    completions = []
    for i in range(n):
        toks = out[i, : n_out[i]].tolist()
        stopped = bool(toks) and toks[-1] in stop_ids
        toks = toks[:-1] if stopped else toks
        text = None if tokenizer is None else tokenizer.decode(toks)
        cut = find_stop(text, stop_texts) if stop_texts else None
        if cut is not None:
            toks, text = _cut_at_stop(toks, text, cut, tokenizer)
            stopped = True
        completions.append(Completion(toks, text, "stop" if stopped else "length"))
    return completions[0] if single else completions
