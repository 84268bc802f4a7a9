"""Orbax checkpoints of a training run: `<output_dir>/checkpoints/<step>/{state,data,config}`.

- state:  TrainState (params, optimizer state, step, RNG), sharded arrays; restoring onto another
          mesh reshards them.
- data:   the state of every data stream (JSON), so the run resumes on the next batch.
- config: the model and training configurations (JSON).

Saves are asynchronous and atomic: orbax writes a temporary folder and renames it once every
process has finished, so an interrupted save is never listed, hence never restored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from yoco_jax.sharding import unbox

CHECKPOINT_DIR = "checkpoints"
# Model fields that change how the model computes, not which parameters it has.
RUNTIME_FIELDS = frozenset({"dtype", "attention_impl", "remat"})


class Checkpointer:
    """Saves and restores training checkpoints in `<output_dir>/checkpoints`."""

    def __init__(self, output_dir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = checkpoint_directory(output_dir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, config: dict) -> None:
        """Starts an asynchronous save (every process calls it). `data_state` maps this
        process's data streams to their iterator states; the streams of all processes are
        stored together, so a run with another process count can pick its own."""
        streams = {}
        for process_streams in _gather_json(data_state):
            streams.update(process_streams)
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"streams": streams}),
                config=ocp.args.JsonSave(config),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, dict, dict]:
        """(state, data stream states, config) of checkpoint `step`.

        abstract_state: jax.ShapeDtypeStruct leaves carrying the target shardings.
        """
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return restored.state, restored.data["streams"], restored.config

    def read_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            "config"
        ]

    def wait(self) -> None:
        """Blocks until the pending asynchronous save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def checkpoint_directory(output_dir: str) -> str:
    return os.path.join(os.path.abspath(output_dir), CHECKPOINT_DIR)


def check_compatible(saved_model: dict, model_config) -> None:
    """Raises when a checkpoint's model config differs from the run's in a parameter-shaping
    field (compute dtype, attention implementation and remat policy may change on resume)."""
    current = dataclasses.asdict(model_config)
    differences = {
        key: (saved_model.get(key), value)
        for key, value in current.items()
        if key not in RUNTIME_FIELDS and saved_model.get(key) != value
    }
    if differences:
        listed = ", ".join(
            f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in differences.items()
        )
        raise ValueError(
            f"the checkpoint's model config does not match this run ({listed}); use the same "
            "model settings, another output_dir, or --restart to start over"
        )


def load_params(output_dir: str, step: int | None = None):
    """(ModelConfig, params) of a training run's checkpoint (default: the latest), params only
    (no optimizer state), as float32 arrays on the default device."""
    from yoco_jax.config import from_dict
    from yoco_jax.model import build_model

    directory = checkpoint_directory(output_dir)
    manager = ocp.CheckpointManager(directory)
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(
            f"no checkpoint {'' if step is None else f'step {step} '}in {directory} "
            f"(available steps: {list(manager.all_steps())})"
        )
    config = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    model_config = from_dict(config["config"]["model"])
    module = build_model(model_config)
    boxed = jax.eval_shape(module.init, jax.random.key(0), jax.numpy.zeros((1, 8), np.int32))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        unbox(boxed["params"]),
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={"params": abstract},
                restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract}),
                partial_restore=True,
            )
        ),
    )
    manager.close()
    return model_config, restored["state"]["params"]


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
