"""Prefill: prompts run through `extend` chunk by chunk into a cache (activation memory bounded
by a chunk; the global K/V written once; YOCO's cross-decoder runs only at each chunk's last
token). Under a mesh with a `context` axis each chunk is split along its length over the axis
and the cache along its positions (inference/placement.py)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

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
from yoco_jax.model.cache import Cache
from yoco_jax.model.handle import ModelHandle


@functools.partial(jax.jit, static_argnames=("config", "fresh"), donate_argnames=("cache", "last"))
def _prefill_chunk(config: ModelConfig, params, tokens, n_new, cache, last, fresh: bool):
    """extend over one chunk; rows with no new token keep their previous last logits."""
    logits, cache = build_model(config).apply(
        {"params": params}, tokens, cache, n_new, fresh=fresh, method="extend"
    )
    return placement.constrain((jnp.where((n_new > 0)[:, None], logits, last), cache))


def prefill_tokens(
    model: ModelHandle,
    tokens: np.ndarray,
    lengths: np.ndarray,
    cache: Cache | None = None,
    *,
    max_len: int | None = None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
):
    """Right-padded int tokens [B, P] (lengths[b] real ones, 0 allowed) -> (logits [B, V], cache).

    Without `cache`, a fresh one of `max_len` positions (default P) is made. P need not be a
    multiple of `chunk_size`: a shorter last chunk costs one more compilation. `mesh`: see
    `prefill`; P, `chunk_size` and the cache length must then be multiples of its context size.
    """
    chunk_size = default_prefill_chunk() if chunk_size is None else chunk_size
    check_positive("chunk_size", chunk_size)
    cfg = model.config
    b, p = tokens.shape
    fresh = cache is None
    cache_len = (max_len or p) if fresh else cache.max_len
    _check_split(cfg, mesh, b, p, chunk_size, cache_len, fresh)
    cache = placement.new_cache(cfg, b, cache_len, mesh) if fresh else placement.place(cache, mesh)
    used = np.asarray(cache.lengths) + lengths
    if used.max(initial=0) > cache.max_len:
        raise ValueError(
            f"prompt needs {int(used.max())} cache positions but the cache holds "
            f"{cache.max_len}: pass a larger max_len"
        )
    params = placement.place_params(cfg, model.params, mesh)
    last = placement.place(jnp.zeros((b, cfg.vocab_size), jnp.float32), mesh)
    with placement.use(mesh):
        for start in range(0, max(p, 1), chunk_size):
            chunk = tokens[:, start : start + chunk_size]
            n_new = np.clip(lengths - start, 0, chunk.shape[1]).astype(np.int32)
            chunk, n_new = placement.place((chunk, n_new), mesh)
            last, cache = _prefill_chunk(cfg, params, chunk, n_new, cache, last, fresh)
            fresh = False
    return last, cache


def _check_split(cfg: ModelConfig, mesh, rows: int, width: int, chunk: int, cache_len: int,
                 fresh: bool) -> None:  # fmt: skip
    """Refuses a batch that does not split over `mesh` (rows over data, lengths over context)."""
    placement.check_mesh(cfg, mesh)
    placement.check_rows(rows, mesh, "the number of prompts (cache rows)")
    n = placement.context_size(mesh)
    if n == 1:
        return
    for what, size in (("prompt width", width), ("prefill chunk", min(chunk, width)),
                       ("cache length (max_len)", cache_len)):  # fmt: skip
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


def prefill(
    model: ModelHandle,
    prompts,
    *,
    cache: Cache | None = None,
    max_len: int | None = None,
    chunk_size: int | None = None,
    tokenizer=None,
    buckets: Buckets = DEFAULT_BUCKETS,
    mesh: Mesh | None = None,
):
    """Prompts (token lists or strings) -> (last-position logits [B, V], cache).

    With `cache` (e.g. a loaded document), the prompts continue it (one per cache row); without,
    a fresh cache of `max_len` positions (default: the longest prompt's bucket). The prompt
    width is padded to a bucket, then to a multiple of the chunk, so chunks share one shape.

    `mesh` (`yoco_jax.sharding.make_mesh`): prompts split over its data axes (their number
    must divide), each chunk along its length over `context`, and the returned cache stays
    split along its length (chunk and max_len rounded up to multiples of the context size).
    """
    chunk_size = default_prefill_chunk() if chunk_size is None else chunk_size
    check_positive("chunk_size", chunk_size)
    placement.check_mesh(model.config, mesh)
    token_lists, _ = as_token_lists(prompts, tokenizer or model.tokenizer)
    check_prompts(model, token_lists)
    if cache is not None and len(token_lists) != cache.lengths.shape[0]:
        raise ValueError(
            f"{len(token_lists)} prompts for a cache of {cache.lengths.shape[0]} rows: "
            "give one prompt per cache row"
        )
    used = None if cache is None else np.asarray(cache.lengths)
    shape = plan([len(p) for p in token_lists], buckets=buckets, chunk_size=chunk_size,
                 max_len=max_len, used=used, multiple=placement.context_size(mesh))  # fmt: skip
    tokens, lengths = pad_prompts(token_lists, len(token_lists), shape.width)
    return prefill_tokens(
        model, tokens, lengths, cache, max_len=shape.max_len, chunk_size=shape.chunk, mesh=mesh
    )
