"""Cross-entropy of hidden states split over the `context` mesh axis.

Each device runs the chunked cross-entropy (yoco_jax.train.loss) on its slice of the sequence;
the summed losses and token counts are added over the axis, so the mean taken by the train step
is over the whole global batch. Without a context axis this is `loss.cross_entropy_sums`.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

from yoco_jax import sharding
from yoco_jax.ops import context_parallel as cp
from yoco_jax.train import loss


def cross_entropy_sums(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    chunk: int = 1024,
) -> tuple[jax.Array, jax.Array]:
    """As `loss.cross_entropy_sums`: hidden [B, T, D], kernel [D, V], targets and mask [B, T];
    returns (summed loss, counted tokens), float32 scalars."""
    if sharding.tracing().context_size == 1:
        return loss.cross_entropy_sums(hidden, kernel, targets, mask, chunk=chunk)
    cp.check_length(hidden.shape[1])

    def local(hidden, targets, mask, kernel):
        total, count = loss.cross_entropy_sums(hidden, kernel, targets, mask, chunk=chunk)
        return jax.lax.psum(total, cp.AXIS), jax.lax.psum(count, cp.AXIS)

    # check_vma=False: loss.py's scan starts from an unannotated zero. Without the check, the
    # kernel's cotangent is still summed over the axis (tests/ops/test_context_parallel.py).
    specs = dict(in_specs=(cp.SPLIT,) * 3 + (P(),), out_specs=(P(), P()), check_vma=False)
    return jax.shard_map(local, axis_names={cp.AXIS}, **specs)(hidden, targets, mask, kernel)
