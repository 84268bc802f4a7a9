"""Global batches as sharded jax.Arrays, built from each process's share of the data.

The global batch [batch_size, seq_len] is the concatenation of `shards` independent data streams
(`make_iterator(..., process_index=k, process_count=shards)`, batch_size / shards rows each).
Each process reads only the streams behind the rows its devices hold and hands its rows to
`jax.make_array_from_process_local_data`. The batches depend on `shards`, never on the number of
processes or the mesh, so runs with different layouts see the same data.
"""

from __future__ import annotations

import numpy as np
from jax.sharding import NamedSharding

from yoco_jax.sharding import process_batch_slice

KEYS = ("inputs", "targets", "segment_ids", "loss_mask")


class GlobalBatches:
    """Iterator of dicts of global [batch_size, seq_len] jax.Arrays; checkpointable."""

    def __init__(
        self,
        data_config,
        tokenizer,
        sharding: NamedSharding,
        *,
        batch_size: int,
        seq_len: int,
        shards: int,
        seed: int,
        split: str = "train",
        sources=None,
    ):
        """sources: `resolve_sources(data_config.path, data_config.kind)`, shared by the streams
        (default: each stream reads them)."""
        from yoco_jax.data import make_iterator

        index, count = process_batch_slice(sharding, batch_size)
        shards = shards or count
        if shards % count or batch_size % shards:
            raise ValueError(
                f"data_shards={shards}: the batch is split over {count} process slices, so it "
                f"must be a multiple of {count} dividing batch_size={batch_size}"
            )
        per_process = shards // count
        self.sharding, self.shape = sharding, (batch_size, seq_len)
        self.stream_rows = batch_size // shards
        self.iterators = {
            k: make_iterator(
                data_config,
                tokenizer,
                seq_len=seq_len,
                batch_size=self.stream_rows,
                split=split,
                seed=seed,
                process_index=k,
                process_count=shards,
                sources=sources,
            )
            for k in range(index * per_process, (index + 1) * per_process)
        }

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self._to_global([next(it) for it in self.iterators.values()])

    def take(self, n: int) -> list[dict]:
        """The first `n` batches; a stream that ends early (the eval split) continues with
        fully masked rows, so every process yields the same number of batches."""
        out = []
        for _ in range(n):
            parts = [next(it, None) or self._masked() for it in self.iterators.values()]
            out.append(self._to_global(parts))
        return out

    def get_state(self) -> dict:
        """{stream index (str): iterator state} of this process's streams (JSON-serializable)."""
        return {str(k): it.get_state() for k, it in self.iterators.items()}

    def set_state(self, states: dict) -> None:
        missing = [k for k in self.iterators if str(k) not in states]
        if missing:
            raise ValueError(
                f"the checkpoint has no state for data streams {missing} (it has "
                f"{sorted(states)}); resume with the same data_shards and batch_size"
            )
        for k, it in self.iterators.items():
            it.set_state(states[str(k)])

    def _to_global(self, parts: list[dict]) -> dict:
        import jax

        return {
            key: jax.make_array_from_process_local_data(
                self.sharding, np.concatenate([p[key] for p in parts]), self.shape
            )
            for key in KEYS
        }

    def _masked(self) -> dict:
        """Rows that count for nothing (loss_mask 0)."""
        shape = (self.stream_rows, self.shape[1])
        return {
            key: np.zeros(shape, np.float32 if key == "loss_mask" else np.int32) for key in KEYS
        }
