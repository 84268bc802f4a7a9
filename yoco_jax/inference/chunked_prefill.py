"""Prefill: prompts run through `extend` chunk by chunk into a cache (activation memory bounded
by a chunk; the global K/V written once; YOCO's cross-decoder runs only at each chunk's last
token). Under a mesh with a `context` axis each chunk is split along its length over the axis
and the cache along its positions (inference/placement.py).

One path for everyone: `prefill_steps` runs the chunks of a padded batch (a generator, so the
server can interleave one chunk at a time with decode blocks); `prefill_tokens` drives it to
the end; `prefill_lists` plans the shapes and readies a continued cache (copied, resized) for
`prefill` and `generate`.
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from yoco_jax.config import ModelConfig
from yoco_jax.inference import placement
from yoco_jax.inference.plan import (
    DEFAULT_BUCKETS,
    Buckets,
    check_positive,
    default_prefill_chunk,
    plan,
)
from yoco_jax.inference.prompts import as_token_lists, check_prompts, pad_prompts
from yoco_jax.model import build_model
from yoco_jax.model.cache import Cache, resize_cache
from yoco_jax.model.handle import ModelHandle


@functools.partial(jax.jit, static_argnames=("config", "fresh"), donate_argnames=("cache", "last"))
def extend_chunk(config: ModelConfig, params, tokens, n_new, cache, last, fresh: bool):
    """`extend` over one chunk [B, C] -> (last logits [B, V], cache); rows with no new token
    keep their previous last logits."""
    logits, cache = build_model(config).apply(
        {"params": params}, tokens, cache, n_new, fresh=fresh, method="extend"
    )
    return placement.constrain((jnp.where((n_new > 0)[:, None], logits, last), cache))


class Scores(NamedTuple):
    """Per position p of a prompt: log p(targets[p]) and the `top` most likely next tokens."""

    logp: Float[Array, "B P"]
    top_ids: Int[Array, "B P K"]
    top_logp: Float[Array, "B P K"]


@functools.partial(
    jax.jit, static_argnames=("config", "fresh", "top"), donate_argnames=("cache", "last")
)
def score_chunk(config: ModelConfig, params, tokens, targets, n_new, cache, last, fresh, top):
    """`extend(logits="all")` over one chunk [B, C], scored inside the jit (no [B, C, V] array
    leaves it): (last logits [B, V], cache, Scores of the chunk: log p(target) [B, C] and the
    `top` most likely ids [B, C, top] with their log-probs)."""
    logits, cache = build_model(config).apply(
        {"params": params}, tokens, cache, n_new, fresh, "all", method="extend"
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    top_logp, top_ids = jax.lax.top_k(logp, top)
    final = jnp.take_along_axis(logits, jnp.maximum(n_new - 1, 0)[:, None, None], axis=1)[:, 0]
    last = jnp.where((n_new > 0)[:, None], final, last)
    return placement.constrain((last, cache, Scores(picked, top_ids.astype(jnp.int32), top_logp)))


def prefill_steps(
    model: ModelHandle,
    tokens: np.ndarray,
    lengths: np.ndarray,
    cache: Cache | None = None,
    *,
    max_len: int | None = None,
    prefill_chunk: int | None = None,
    mesh: Mesh | None = None,
    targets: np.ndarray | None = None,
    top: int = 1,
) -> Generator[tuple, None, tuple]:
    """A generator over the chunks of right-padded tokens [B, P] (lengths[b] real ones, 0
    allowed): yields (chunk width, last logits, cache) after each chunk (the arrays are donated
    to the next chunk: copy them to keep them), returns (logits [B, V], cache), or with
    `targets` [B, P] (logits, cache, Scores as numpy arrays [B, P, ...]).

    Without `targets` the cross-decoder runs at each chunk's last token only (early exit);
    with them at every position (`extend(logits="all")`), scoring targets[b, p] after
    tokens[b, :p + 1] and keeping the `top` most likely tokens (a prompt's log-probs).
    Without `cache`, a fresh one of `max_len` positions (default P) is made; a given cache is
    continued and consumed. Chunks wholly past every row's end are skipped. P need not be a
    multiple of the chunk: a shorter last chunk costs one more compilation. `mesh`: see
    `prefill`; P, the chunk and the cache length must then be multiples of its context size.
    """
    chunk = default_prefill_chunk() if prefill_chunk is None else prefill_chunk
    check_positive("prefill_chunk", chunk)
    cfg = model.config
    b, p = tokens.shape
    fresh = cache is None
    cache_len = (max_len or p) if fresh else cache.max_len
    _check_split(cfg, mesh, b, p, chunk, cache_len, fresh)
    cache = placement.new_cache(cfg, b, cache_len, mesh) if fresh else placement.place(cache, mesh)
    used = np.asarray(cache.lengths) + lengths
    if used.max(initial=0) > cache.max_len:
        raise ValueError(
            f"prompt needs {int(used.max())} cache positions but the cache holds "
            f"{cache.max_len}: pass a larger max_len"
        )
    params = placement.place_params(cfg, model.params, mesh)
    last = placement.place(jnp.zeros((b, cfg.vocab_size), jnp.float32), mesh)
    scores = []
    with placement.use(mesh):
        for start in range(0, max(int(lengths.max(initial=0)), 1), chunk):
            piece = tokens[:, start : start + chunk]
            n_new = np.clip(lengths - start, 0, piece.shape[1]).astype(np.int32)
            piece, n_new = placement.place((piece, n_new), mesh)
            if targets is None:
                last, cache = extend_chunk(cfg, params, piece, n_new, cache, last, fresh)
            else:
                aim = placement.place(targets[:, start : start + chunk], mesh)
                last, cache, got = score_chunk(
                    cfg, params, piece, aim, n_new, cache, last, fresh, top
                )
                scores.append(jax.device_get(got))
            fresh = False
            yield piece.shape[1], last, cache  # a consumer may copy the state at the boundary
    if targets is None:
        return last, cache
    return last, cache, Scores(*(np.concatenate(part, axis=1) for part in zip(*scores)))


def prefill_tokens(model: ModelHandle, tokens, lengths, cache: Cache | None = None, **kwargs):
    """`prefill_steps` run to the end: its return value."""
    steps = prefill_steps(model, tokens, lengths, cache, **kwargs)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def _check_split(
    cfg: ModelConfig, mesh, rows: int, width: int, chunk: int, cache_len: int, fresh: bool
) -> None:
    """Refuses a batch that does not split over `mesh` (rows over data, lengths over context)."""
    placement.check_mesh(cfg, mesh)
    placement.check_rows(rows, mesh, "the number of prompts (cache rows)")
    n = placement.context_size(mesh)
    if n == 1:
        return
    for what, size in (
        ("prompt width", width),
        ("prefill chunk", min(chunk, width)),
        ("cache length (max_len)", cache_len),
    ):
        if size % n:
            raise ValueError(
                f"{what} {size} does not split over the context axis of size {n}: use a "
                f"multiple of {n} (prefill and generate round it up for you)"
            )
    if cfg.sliding_window is not None and not (fresh and chunk >= width):
        # Only a fresh cache's first chunk takes the split window path (context_parallel).
        raise ValueError(
            f"a sliding-window model prefills over a context mesh in one chunk into a fresh "
            f"cache: pass a prefill chunk >= the prompt width {width} and no cache to continue"
        )


def prefill_lists(
    model: ModelHandle,
    token_lists: Sequence[Sequence[int]],
    *,
    cache: Cache | None = None,
    max_len: int | None = None,
    max_new_tokens: int = 0,
    prefill_chunk: int | None = None,
    buckets: Buckets = DEFAULT_BUCKETS,
    mesh: Mesh | None = None,
    rows: int | None = None,
):
    """Checked token lists -> (last logits [rows, V], cache), the shapes planned once.

    `rows`: batch rows of a fresh cache (default one per prompt; extra rows are padding).
    A continued `cache` (one prompt per row) is copied, never consumed, and resized to the
    planned max_len when it lacks room for the prompts and `max_new_tokens` or does not split
    over the mesh's context axis.
    """
    chunk = default_prefill_chunk() if prefill_chunk is None else prefill_chunk
    check_positive("prefill_chunk", chunk)
    placement.check_mesh(model.config, mesh)
    n = len(token_lists)
    if cache is not None and n != cache.lengths.shape[0]:
        raise ValueError(
            f"{n} prompts for a cache of {cache.lengths.shape[0]} rows: give one per cache row"
        )
    used = None if cache is None else np.asarray(cache.lengths)
    context = placement.context_size(mesh)
    shape = plan(
        [len(p) for p in token_lists],
        max_new_tokens,
        buckets=buckets,
        prefill_chunk=chunk,
        max_len=max_len,
        used=used,
        multiple=context,
    )
    if cache is None:
        rows = n if rows is None else rows
    else:
        rows = n
        cap = cache.max_len
        if shape.need > cap or cap % context or (max_len is not None and max_len > cap):
            cap = max(shape.max_len, -(-cap // context) * context)
        cache = resize_cache(cache, cap)  # a copy: the caller's cache stays usable
    tokens, lengths = pad_prompts(token_lists, rows, shape.width)
    return prefill_tokens(
        model, tokens, lengths, cache, max_len=shape.max_len, prefill_chunk=shape.chunk, mesh=mesh
    )


def prefill(
    model: ModelHandle,
    prompts,
    *,
    cache: Cache | None = None,
    max_len: int | None = None,
    prefill_chunk: int | None = None,
    tokenizer=None,
    buckets: Buckets = DEFAULT_BUCKETS,
    mesh: Mesh | None = None,
):
    """Prompts (token lists or strings) -> (last-position logits [B, V], cache).

    With `cache` (e.g. a loaded document), the prompts continue it (one per cache row; the
    cache is copied, not consumed, and grown to `max_len` when given, else to the bucket of what
    it must hold); without, a fresh cache of `max_len` positions (default: the longest prompt's
    bucket). The prompt width is padded to a bucket, then to a multiple of the chunk, so chunks
    share one shape.

    `mesh` (`yoco_jax.sharding.make_mesh`): prompts split over its data axes (their number
    must divide), each chunk along its length over `context`, and the returned cache stays
    split along its length (chunk and max_len rounded up to multiples of the context size).
    """
    token_lists, _ = as_token_lists(prompts, tokenizer or model.tokenizer)
    check_prompts(model, token_lists)
    return prefill_lists(
        model,
        token_lists,
        cache=cache,
        max_len=max_len,
        prefill_chunk=prefill_chunk,
        buckets=buckets,
        mesh=mesh,
    )
