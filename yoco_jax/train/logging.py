"""Run metrics: metrics.jsonl (one JSON object per logged step) and TensorBoard scalars.

Only process 0 writes. tensorboardX is optional (imported here only; absent on some machines):
without it the JSONL file is still written.
"""

from __future__ import annotations

import json
import os
import warnings

import jax

# Dense bf16 peak FLOP/s per device, for the MFU estimate (None: unknown, no MFU logged).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops(device: jax.Device) -> float | None:
    kind = device.device_kind
    return next((flops for name, flops in PEAK_FLOPS.items() if name in kind), None)


def flops_per_token(n_params: int, n_layers: int, dim: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward + backward) plus causal attention
    scores and values, 6 * layers * seq_len * dim (an upper bound for YOCO's cheaper
    self-decoder)."""
    return 6.0 * n_params + 6.0 * n_layers * seq_len * dim


def memory_stats() -> dict[str, float]:
    """Device memory in GiB where the backend reports it (GPU/TPU; not CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {}
    for key, name in (("bytes_in_use", "memory_gib"), ("peak_bytes_in_use", "peak_memory_gib")):
        if key in stats:
            out[name] = stats[key] / 2**30
    return out


class MetricsLogger:
    """Writes `<output_dir>/metrics.jsonl` and TensorBoard event files under `<output_dir>/tb`.

    start: the step the run starts from. What an earlier run logged after it (it went on past
    its last checkpoint before it stopped) is dropped, so each step is logged once: rows of
    metrics.jsonl with a larger step are removed, and TensorBoard is told to purge its events
    after `start` (a purge_step)."""

    def __init__(self, output_dir: str, start: int = 0):
        self.active = jax.process_index() == 0
        self._file = self._writer = None
        if not self.active:
            return
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "metrics.jsonl")
        _drop_rows_after(path, start)
        self._file = open(path, "a")  # noqa: SIM115
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            warnings.warn("tensorboardX is not installed: no TensorBoard logs", stacklevel=2)
        else:
            tb = os.path.join(output_dir, "tb")
            self._writer = SummaryWriter(tb, purge_step=start + 1 if os.path.isdir(tb) else None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in metrics.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def _drop_rows_after(path: str, step: int) -> None:
    """Keeps the rows of a metrics.jsonl file up to `step` (and drops a torn last line)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        f.writelines(kept)
    os.replace(temporary, path)
