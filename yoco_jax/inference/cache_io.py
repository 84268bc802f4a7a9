"""A prefilled cache on disk: one .npz holding the NamedTuple's leaves plus the config as JSON
(the cache types themselves: model/cache.py).

"Cache once": prefill a long document once, `save_cache`; later `load_cache` and ask questions
with `generate(model, question, cache=cache)`, without running the document again. The file
records the model's config and a fingerprint of its weights, so a cache is never used by another
model or by other weights of the same shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from yoco_jax.config import ModelConfig, from_dict
from yoco_jax.model.cache import (
    Cache,
    KVCache,
    QuantizedKV,
    WindowKV,
    convert_kv,
    init_cache,
    kv_cache_dtype,
    resize_cache,
)


@jax.jit
def _weight_samples(params):
    """Up to 256 numbers of the first and of the last row of every tensor, in bfloat16."""

    def sample(x):
        x = x.reshape(1) if x.ndim == 0 else x
        row = lambda i: x[(i,) * (x.ndim - 1)][:256]  # static slices: no gather of the tensor
        return jnp.stack([row(0), row(-1)]).astype(jnp.bfloat16)

    return jax.tree.map(sample, params)


def params_fingerprint(params) -> str:
    """16 hex digits identifying the weights: a hash of every tensor's path, shape and a few
    hundred of its numbers (cheap to gather from any sharding). The numbers are rounded to
    bfloat16, so the same weights stored in float32 or bfloat16 share a fingerprint."""
    digest = hashlib.sha256()
    samples = jax.device_get(_weight_samples(params))
    for (path, x), sample in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(samples)
    ):
        digest.update(f"{jax.tree_util.keystr(path)}{tuple(x.shape)}".encode())
        digest.update(np.asarray(sample).tobytes())
    return digest.hexdigest()[:16]


def _with_kv_dtype(cache, dtype):
    """The cache with its K/V in `dtype`: the global (or per-layer) K/V converted (int8:
    quantized; a float dtype: dequantized or cast), window rings cast (kept for int8, which
    stores only those K/V); retention states stay f32."""
    is_kv = lambda c: isinstance(c, (KVCache, QuantizedKV, WindowKV))

    def cast(c):
        if isinstance(c, WindowKV):
            return c if dtype == jnp.int8 else WindowKV(*(x.astype(dtype) for x in c))
        return convert_kv(c, dtype) if is_kv(c) else c

    return jax.tree.map(cast, cache, is_leaf=is_kv)


def save_cache(path, cache: Cache, config: ModelConfig, logits=None, *, params=None) -> Path:
    """Writes `cache` (and optionally the prefill's last logits [B, V]) to `path` (.npz).

    `params`: the weights that made the cache; their fingerprint is stored, and `load_cache`
    with `params=` then refuses other weights.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(cache)]
    meta = {
        "config": dataclasses.asdict(config),
        "batch": int(cache.lengths.shape[0]),
        "max_len": cache.max_len,
        "kv_dtype": str(cache.kv_dtype),
        "dtypes": [str(x.dtype) for x in leaves],
        "params_fingerprint": None if params is None else params_fingerprint(params),
    }
    # npz has no bfloat16: store every leaf as raw bytes of its own width, the dtype in meta.
    arrays = {f"leaf_{i}": x.view(f"u{x.dtype.itemsize}") for i, x in enumerate(leaves)}
    if logits is not None:
        arrays["logits"] = np.asarray(jax.device_get(logits), np.float32)
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    return path


def load_cache(
    path,
    config: ModelConfig | None = None,
    max_len: int | None = None,
    *,
    params=None,
    dtype: str | None = None,
):
    """Reads a cache written by `save_cache` -> (cache, logits or None, config).

    `config`: the model that will use the cache; a cache of another model is a clear error.
    `params`: that model's weights; a cache made by other weights is a clear error.
    `max_len`: grow the K/V to this many positions (room for the questions and answers).
    `dtype`: the K/V dtype; default `config`'s (its kv_cache_dtype, else its dtype: the cache
    the model itself would make, e.g. float32 for a float32 model reading a bfloat16 model's
    cache; an int8 cache dequantized, or a float one quantized), or as saved without config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cache file {path} does not exist (write one with save_cache)")
    meta, data = _read(path)
    saved = from_dict(meta["config"])
    if config is not None and config.architecture != saved.architecture:
        raise ValueError(
            f"{path} holds the cache of another model ({saved}); it cannot serve {config}"
        )
    if params is not None:
        _check_fingerprint(path, meta.get("params_fingerprint"), params)
    template = jax.eval_shape(
        lambda: init_cache(saved, meta["batch"], meta["max_len"], meta["kv_dtype"])
    )
    shapes, treedef = jax.tree.flatten(template)
    leaves = []
    for i, (like, stored) in enumerate(zip(shapes, meta["dtypes"])):
        x = data[f"leaf_{i}"].view(jnp.dtype(stored))
        if x.shape != like.shape:
            raise ValueError(f"{path} is corrupt: leaf {i} has shape {x.shape}, not {like}")
        leaves.append(jnp.asarray(x))
    logits = jnp.asarray(data["logits"]) if "logits" in data else None
    cache = jax.tree.unflatten(treedef, leaves)
    dtype = dtype or (kv_cache_dtype(config) if config is not None else None)
    if dtype is not None:
        cache = _with_kv_dtype(cache, jnp.dtype(dtype))
    if max_len is not None and max_len > meta["max_len"]:
        cache = resize_cache(cache, max_len)
    return cache, logits, config or saved


def _read(path: Path) -> tuple[dict, dict]:
    """(meta, arrays) of a cache file, or a ValueError when it is truncated or not one."""
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(str(arrays.pop("meta")))
        missing = {"config", "batch", "max_len", "kv_dtype", "dtypes"} - set(meta)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))} in its metadata")
        return meta, arrays
    except Exception as error:  # zipfile, numpy and json raise many kinds for a damaged file
        raise ValueError(
            f"{path} is not a readable cache file ({type(error).__name__}: "
            f"{str(error)[:120]}): save it again with save_cache"
        ) from None


def _check_fingerprint(path, saved: str | None, params) -> None:
    if saved is None:
        raise ValueError(
            f"{path} was saved without a fingerprint of its weights, so it cannot be checked "
            "against these params: save it again with save_cache(..., params=model.params), or "
            "load it without params= if you are sure it came from these weights"
        )
    ours = params_fingerprint(params)
    if saved != ours:
        raise ValueError(
            f"{path} was prefilled by other weights (fingerprint {saved}, these params: {ours}); "
            "with them its answers would be wrong: prefill the document again with this model"
        )
