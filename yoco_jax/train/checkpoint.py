"""Orbax checkpoints of a training run:
`<output_dir>/checkpoints/<step>/{state,data,config,checksums}`.

- state:     TrainState (params, optimizer state, step, RNG), sharded arrays; restoring onto
             another mesh reshards them.
- data:      the state of every data stream (JSON), so the run resumes on the next batch.
- config:    the model and training configurations (JSON).
- checksums: of everything above (checksums.py), compared after every restore.

Saves are asynchronous and atomic: orbax writes a temporary folder and renames it once every
process has finished, so an interrupted save is never listed, hence never restored. A step whose
files were damaged later (checksums differ, files missing or unreadable) is skipped with a
warning naming it: restores fall back to the newest intact step.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from yoco_jax.config import ARCHITECTURE_FIELDS
from yoco_jax.errors import CheckpointError
from yoco_jax.model.scan import is_stacked, to_layout
from yoco_jax.train.checksums import json_checksum, tree_checksums, verify
from yoco_jax.train.damage import CheckpointWarning, brief, listed, quiet_failed_restores

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged-checkpoints"


class Checkpointer:
    """Saves and restores training checkpoints in `<output_dir>/checkpoints`."""

    def __init__(self, output_dir: str, *, keep: int = 3, async_save: bool = True):
        self.output_dir = os.path.abspath(output_dir)
        self.directory = checkpoint_directory(output_dir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, config: dict) -> None:
        """Starts an asynchronous save (every process calls it). `data_state` maps this
        process's data streams to their iterator states; the streams of all processes are
        stored together, so a run with another process count can pick its own."""
        streams = {}
        for process_streams in _gather_json(data_state):
            streams.update(process_streams)
        data = {"streams": streams}
        checksums = {
            "state": {name: tree_checksums(value) for name, value in state._asdict().items()},
            "data": json_checksum(data),
            "config": json_checksum(config),
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(config),
                checksums=ocp.args.JsonSave(checksums),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, dict, dict]:
        """(state, data stream states, config) of checkpoint `step`, checked against its
        checksums (CheckpointError if they differ).

        abstract_state: jax.ShapeDtypeStruct leaves carrying the target shardings, in either
        layer layout (model/scan.py): a checkpoint saved in the other one is converted.
        """
        checked = has_checksums(self.directory, step)
        saved_scanned = bool(self.read_config(step).get("model", {}).get("scan_layers", False))
        target, abstract_state = abstract_state, to_layout(abstract_state, saved_scanned)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
                **({"checksums": ocp.args.JsonRestore()} if checked else {}),
            ),
        )
        if checked:
            what, sums = f"checkpoint step {step}", restored.checksums
            for name, value in restored.state._asdict().items():
                verify(sums["state"][name], tree_checksums(value), f"{what} {name}")
            verify(
                {"data": sums["data"], "config": sums["config"]},
                {"data": json_checksum(restored.data), "config": json_checksum(restored.config)},
                what,
            )
        state = restored.state
        if is_stacked(target.params) != saved_scanned:
            state = jax.tree.map(
                lambda x, t: jax.device_put(x, t.sharding),
                to_layout(state, not saved_scanned),
                target,
            )
        return state, restored.data["streams"], restored.config

    def read_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            "config"
        ]

    def restore_latest(self, abstract_state, check: Callable[[int, dict], None] = lambda *_: None):
        """(step, state, data stream states, config) of the newest intact checkpoint, or None
        when there is none. Damaged newer steps are moved to `<output_dir>/damaged-checkpoints`
        with a warning (so the run can save those steps again); `check(step, config)` raises
        when the run cannot resume from that checkpoint (another model, tokenizer, ...)."""
        damaged = []
        quiet_failed_restores()
        for step in reversed(self.all_steps()):
            try:
                config = self.read_config(step)
            except Exception as error:  # orbax raises many kinds for missing or garbled files
                damaged.append((step, error))
                continue
            check(step, config)
            try:
                state, data, config = self.restore(step, abstract_state)
            except Exception as error:
                damaged.append((step, error))
                continue
            self._set_aside(damaged, step)
            return step, state, data, config
        if damaged:
            raise CheckpointError(
                f"every checkpoint in {self.directory} is damaged ({listed(damaged)}): "
                "restore them, or start over with --restart"
            )
        return None

    def _set_aside(self, damaged: list[tuple[int, Exception]], used: int) -> None:
        if not damaged:
            return
        target = os.path.join(self.output_dir, DAMAGED_DIR)
        for step, error in damaged:
            warnings.warn(
                f"checkpoint step {step} in {self.directory} is damaged ({brief(error)}); "
                f"resuming from step {used}, and step {step} is moved to {target}",
                CheckpointWarning,
                stacklevel=3,
            )
        if jax.process_index() == 0:
            os.makedirs(target, exist_ok=True)
            for step, _ in damaged:
                destination = os.path.join(target, str(step))
                shutil.rmtree(destination, ignore_errors=True)  # an older damaged copy
                os.replace(os.path.join(self.directory, str(step)), destination)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("yoco_jax damaged checkpoints")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until the pending asynchronous save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def checkpoint_directory(output_dir: str) -> str:
    return os.path.join(os.path.abspath(output_dir), CHECKPOINT_DIR)


def check_compatible(saved_model: dict, model_config) -> None:
    """Raises when a checkpoint's model config differs from the run's in its architecture
    (runtime settings such as the compute dtype or remat policy may change on resume)."""
    differences = {
        key: (saved_model.get(key), getattr(model_config, key))
        for key in ARCHITECTURE_FIELDS
        if saved_model.get(key) != getattr(model_config, key)
    }
    if differences:
        listed = ", ".join(
            f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in differences.items()
        )
        raise ValueError(
            f"the checkpoint's model config does not match this run ({listed}); use the same "
            "model settings, another output_dir, or --restart to start over"
        )


def has_checksums(directory: str, step: int) -> bool:
    """Checkpoints saved before checksums existed are restored unchecked."""
    return os.path.isdir(os.path.join(directory, str(step), "checksums"))


def _gather_json(value: Any) -> list:
    """The JSON-serializable `value` of every process, in process order."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([encoded.size], np.int32))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(gathered, lengths.reshape(-1))
    ]
