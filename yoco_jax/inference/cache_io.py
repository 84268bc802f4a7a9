"""A prefilled cache on disk (one .npz: the NamedTuple's leaves plus the config as JSON), and
growing a cache's K/V to a longer max_len.

"Cache once": prefill a long document once, `save_cache`; later `load_cache` and ask questions
with `generate(model, question, cache=cache)`, without running the document again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from yoco_jax.config import ModelConfig, from_dict
from yoco_jax.model.cache import KVCache, init_cache

# Config fields that change numerics or speed, not what the cache holds.
_RUNTIME_FIELDS = {"dtype", "param_dtype", "attention_impl", "remat", "chunk_size"}


def cache_max_len(cache) -> int:
    """The number of positions each sequence's global (or per-layer) K/V can hold."""
    kv = cache.kv if hasattr(cache, "kv") else cache.layers[0]
    return kv.k.shape[1]


def grow_cache(cache, max_len: int):
    """The same cache with every K/V zero-padded along time to `max_len` positions (a copy)."""
    extra = max_len - cache_max_len(cache)
    if extra < 0:
        raise ValueError(f"cannot shrink a cache of {cache_max_len(cache)} positions to {max_len}")
    pad = lambda x: jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
    return jax.tree.map(
        lambda c: KVCache(pad(c.k), pad(c.v)) if isinstance(c, KVCache) else c,
        cache,
        is_leaf=lambda c: isinstance(c, KVCache),
    )


def _same_model(a: ModelConfig, b: ModelConfig) -> bool:
    strip = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in _RUNTIME_FIELDS}
    return strip(a) == strip(b)


def save_cache(path, cache, config: ModelConfig, logits=None) -> Path:
    """Writes `cache` (and optionally the prefill's last logits [B, V]) to `path` (.npz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(cache)]
    meta = {
        "config": dataclasses.asdict(config),
        "batch": int(cache.lengths.shape[0]),
        "max_len": cache_max_len(cache),
        "kv_dtype": str((cache.kv if hasattr(cache, "kv") else cache.layers[0]).k.dtype),
        "dtypes": [str(x.dtype) for x in leaves],
    }
    # npz has no bfloat16: store every leaf as raw bytes of its own width, the dtype in meta.
    arrays = {f"leaf_{i}": x.view(f"u{x.dtype.itemsize}") for i, x in enumerate(leaves)}
    if logits is not None:
        arrays["logits"] = np.asarray(jax.device_get(logits), np.float32)
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return path


def load_cache(path, config: ModelConfig | None = None, max_len: int | None = None):
    """Reads a cache written by `save_cache` -> (cache, logits or None, config).

    `config`: the model that will use the cache; a cache of another model is a clear error.
    `max_len`: grow the K/V to this many positions (room for the questions and answers).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cache file {path} does not exist (write one with save_cache)")
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        saved = from_dict(meta["config"])
        if config is not None and not _same_model(config, saved):
            raise ValueError(
                f"{path} holds the cache of another model ({saved}); it cannot serve {config}"
            )
        template = jax.eval_shape(
            lambda: init_cache(saved, meta["batch"], meta["max_len"], meta["kv_dtype"])
        )
        shapes, treedef = jax.tree.flatten(template)
        leaves = []
        for i, (like, dtype) in enumerate(zip(shapes, meta["dtypes"])):
            x = data[f"leaf_{i}"].view(jnp.dtype(dtype))
            if x.shape != like.shape:
                raise ValueError(f"{path} is corrupt: leaf {i} has shape {x.shape}, not {like}")
            leaves.append(jnp.asarray(x))
        logits = jnp.asarray(data["logits"]) if "logits" in data else None
    cache = jax.tree.unflatten(treedef, leaves)
    if max_len is not None and max_len > meta["max_len"]:
        cache = grow_cache(cache, max_len)
    return cache, logits, config or saved
