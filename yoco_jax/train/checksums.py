"""Checksums of checkpoint contents, so damaged bytes never load silently.

Every array leaf gets two sums of its bits read as uint32 words, modulo 2**32: the plain sum and
the sum weighted by odd numbers (2i + 1), so any change of a single word, and any swap of two
words, changes the checksum. Integer sums are exact in any order, so the checksum is the same
whatever the mesh the array is sharded over (a checkpoint restored onto another mesh checks
out); it is one jitted reduction, computed on the devices holding the shards. JSON items are
hashed with sha256 of their canonical encoding. The checksums are saved in the same atomic
checkpoint as what they cover (the `checksums` item), and compared after every restore.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yoco_jax.errors import CheckpointError


def tree_checksums(tree: Any) -> dict[str, str]:
    """{leaf path (jax keystr): 16 hex digits} of every array leaf of `tree`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    sums = jax.device_get(_sums([leaf for _, leaf in leaves]))
    return {
        jax.tree_util.keystr(path): f"{int(a):08x}{int(b):08x}"
        for (path, _), (a, b) in zip(leaves, np.asarray(sums).reshape(-1, 2))
    }


def json_checksum(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def verify(expected: dict[str, str], actual: dict[str, str], what: str) -> None:
    """Raises CheckpointError naming the first differing leaves of `what`."""
    differing = sorted(k for k in set(expected) | set(actual) if actual.get(k) != expected.get(k))
    if differing:
        raise CheckpointError(
            f"{what}: {len(differing)} item(s) do not match the checksums saved with them "
            f"({', '.join(differing[:3])}): its files are damaged"
        )


@jax.jit
def _sums(leaves: list[jax.Array]) -> jax.Array:
    """[n_leaves, 2] uint32."""
    if not leaves:
        return jnp.zeros((0, 2), jnp.uint32)
    return jnp.stack([_leaf_sums(x) for x in leaves])


def _leaf_sums(x: jax.Array) -> jax.Array:
    words = _as_uint32(x).reshape(-1)
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * weights, dtype=jnp.uint32)])


def _as_uint32(x: jax.Array) -> jax.Array:
    """The bits of `x` as uint32 words (narrower types widened, wider ones split)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size < 4:
        unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8 bytes: a trailing axis of 2 words
