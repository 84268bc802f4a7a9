"""generate: prompts in, completions out. Pads the batch, the prompt width and the cache length
to buckets (inference/plan.py), prefills in chunks (chunked_prefill.py), then runs the jitted
decode loop (decode_loop.py) to the end, or in blocks to stream tokens and match stop strings
(stop_strings.py). With a mesh, rows split over its data axes and prompts and cache along their
length over `context` (inference/placement.py)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from yoco_jax.data.tokenizer_resolver import check_tokenizer
from yoco_jax.inference import placement
from yoco_jax.inference.chunked_prefill import prefill_lists
from yoco_jax.inference.decode_loop import (
    DecodeState,
    check_decode_mesh,
    decode,
    finish_rows,
    start_decode,
)
from yoco_jax.inference.plan import (
    DEFAULT_BUCKETS,
    Buckets,
    check_positive,
)
from yoco_jax.inference.prompts import as_token_lists, check_prompts
from yoco_jax.inference.sampling import Sampling, check_seed
from yoco_jax.inference.stop_strings import cut_at_stop, find_stop, resolve_stop, rows_at_stop
from yoco_jax.model.cache import Cache
from yoco_jax.model.handle import ModelHandle


@dataclasses.dataclass
class Completion:
    """One prompt's continuation: tokens without the stop token, text when a tokenizer is
    known, finish_reason "stop" (a stop token) or "length" (max_new_tokens)."""

    tokens: list[int]
    text: str | None
    finish_reason: str


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
    cache: Cache | None = None,
    tokenizer=None,
    add_bos: bool = False,
    prefill_chunk: int | None = None,
    buckets: Buckets = DEFAULT_BUCKETS,
    on_tokens: Callable[[list[list[int]]], None] | None = None,
    block: int = 8,
    mesh: Mesh | None = None,
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
    `mesh` (`yoco_jax.sharding.make_mesh`, e.g. {"context": 4, "data": 2}): rows split over
    its data axes (padded to a multiple), each prompt chunk along its length over `context`,
    and the K/V cache stays split along its length while decoding (the prompt chunk and
    max_len are rounded up to multiples of the context size); the same tokens as without.
    Returns one Completion per prompt (a single one for a single prompt).
    """
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is not None:  # before any work: a wrong one fails only when decoding
        check_tokenizer(tokenizer, model.config.vocab_size)
    check_positive("block", block)
    check_seed(seed)
    token_lists, single = as_token_lists(prompts, tokenizer, add_bos)
    check_prompts(model, token_lists)
    sampling = Sampling.checked(temperature, top_k, top_p)
    stops = resolve_stop(stop, tokenizer)
    outside = [i for i in stops[0] if not 0 <= i < model.config.vocab_size]
    if outside:
        raise ValueError(
            f"stop ids {outside} lie outside the vocabulary [0, {model.config.vocab_size}): "
            "give ids the model can produce"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    n = len(token_lists)
    placement.check_mesh(model.config, mesh)  # before its data axes size the batch
    rows = None if cache is not None else placement.round_rows(buckets.batch_size(n), mesh)
    logits, cache = prefill_lists(
        model,
        token_lists,
        cache=cache,
        max_len=max_len,
        max_new_tokens=max_new_tokens,
        prefill_chunk=prefill_chunk,
        buckets=buckets,
        mesh=mesh,
        rows=rows,
    )
    rows = cache.lengths.shape[0]
    budget = np.where(np.arange(rows) < n, max_new_tokens, 0)
    state = start_decode(logits, cache, budget, seed, buckets.seq_len(max_new_tokens), sampling)
    state = _decode_all(model, state, n, stops, tokenizer, on_tokens, block, mesh)
    completions = _completions(state, n, stops, tokenizer)
    return completions[0] if single else completions


def _decode_all(
    model, state: DecodeState, n: int, stops, tokenizer, on_tokens, block: int, mesh
) -> DecodeState:
    """Decodes every row to its end: in one call, or in blocks of `block` tokens to stream
    them (`on_tokens`) and to end rows whose text holds a stop string. Model and state are
    checked and placed once, before the first block."""
    stop_ids, stop_texts = stops
    check_decode_mesh(model.config, state, mesh)
    model = ModelHandle(model.config, placement.place_params(model.config, model.params, mesh))
    state = placement.place(state, mesh)
    run = functools.partial(decode, model, stop_ids=stop_ids, mesh=mesh, placed=True)
    if on_tokens is None and not stop_texts:
        return run(state)
    shown = np.zeros((n,), np.int64)
    while True:
        state = run(state, steps=block)
        out, n_out, done = jax.device_get((state.tokens, state.n_out, state.done))
        if on_tokens is not None:
            on_tokens([out[i, shown[i] : n_out[i]].tolist() for i in range(n)])
        shown = n_out[:n].astype(np.int64)
        if stop_texts:
            hit = rows_at_stop(out, n_out, done, stop_texts, tokenizer)
            state = finish_rows(state, hit) if hit.any() else state
            done = done | hit
        if done.all():
            return state


def _completions(
    state: DecodeState, n: int, stops: tuple[Sequence[int], Sequence[str]], tokenizer
) -> list[Completion]:
    """The first `n` rows' tokens, without the stop token, cut before any stop string."""
    stop_ids, stop_texts = stops
    out, n_out = jax.device_get((state.tokens, state.n_out))
    completions = []
    for i in range(n):
        toks = out[i, : n_out[i]].tolist()
        stopped = bool(toks) and toks[-1] in stop_ids
        toks = toks[:-1] if stopped else toks
        text = None if tokenizer is None else tokenizer.decode(toks)
        cut = find_stop(text, stop_texts) if stop_texts else None
        if cut is not None:
            toks, text = cut_at_stop(toks, text, cut, tokenizer)
            stopped = True
        completions.append(Completion(toks, text, "stop" if stopped else "length"))
    return completions
