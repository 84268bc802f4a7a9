"""Loading a training run's parameters for inference, read-only: the newest intact checkpoint
step (damaged ones skipped with a warning), checked against its checksums; a step without
checksums is refused unless asked for."""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from yoco_jax.errors import CheckpointError
from yoco_jax.sharding import unbox
from yoco_jax.train.checkpoint import checkpoint_directory, has_checksums
from yoco_jax.train.checksums import tree_checksums, verify
from yoco_jax.train.damage import CheckpointWarning, brief, listed, quiet_failed_restores


class UnverifiedError(CheckpointError):
    """A checkpoint step without checksums: its bits cannot be checked."""


def load_params(output_dir: str, step: int | None = None, *, allow_unverified: bool = False):
    """(ModelConfig, params) of a training run's checkpoint, params only (no optimizer state),
    as float32 arrays on the default device, checked against the checkpoint's checksums.

    step: None = the newest intact step (damaged newer ones are skipped with a
    CheckpointWarning naming them); an explicit step that is damaged raises CheckpointError.
    A step without checksums (deleted, or saved before they existed) counts as damaged unless
    `allow_unverified`: then it loads unchecked, with a CheckpointWarning.
    Reads only: nothing is created or moved in `output_dir`."""
    directory = checkpoint_directory(output_dir)
    steps = []
    if os.path.isdir(directory):
        with _reader(directory) as manager:
            steps = sorted(manager.all_steps(), reverse=True)
    if not steps or (step is not None and step not in steps):
        raise FileNotFoundError(
            f"no checkpoint {'' if step is None else f'step {step} '}in {directory} "
            f"(available steps: {sorted(steps)})"
        )
    damaged = []
    quiet_failed_restores()
    for candidate in steps if step is None else [step]:
        try:
            loaded = _load_params(directory, candidate, allow_unverified)
        except Exception as error:  # orbax raises many kinds for missing or garbled files
            damaged.append((candidate, error))
            continue
        for bad, error in damaged:
            warnings.warn(
                f"checkpoint step {bad} in {directory} is damaged ({brief(error)}); loading "
                f"step {candidate} instead",
                CheckpointWarning,
                stacklevel=2,
            )
        return loaded
    unverified = any(isinstance(error, UnverifiedError) for _, error in damaged)
    fix = "; --allow-unverified (allow_unverified=True) loads a step without checksums unchecked"
    raise CheckpointError(
        f"{'every checkpoint' if step is None else f'checkpoint step {step}'} in {directory} is "
        f"damaged ({listed(damaged)}){fix if unverified else ''}"
    )


def _load_params(directory: str, step: int, allow_unverified: bool):
    from yoco_jax.config import from_dict
    from yoco_jax.model import build_model

    checked = has_checksums(directory, step)
    if not checked:
        if not allow_unverified:
            raise UnverifiedError("unverified: it has no checksums, so damage would go unnoticed")
        warnings.warn(
            f"checkpoint step {step} in {directory} has no checksums: loading it unverified",
            CheckpointWarning,
            stacklevel=3,
        )
    with _reader(directory) as manager:
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
                ),
                **({"checksums": ocp.args.JsonRestore()} if checked else {}),
            ),
        )
    params = restored["state"]["params"]
    if checked:
        expected = restored["checksums"]["state"]["params"]
        verify(expected, tree_checksums(params), f"checkpoint step {step} params")
    return model_config, params


def _reader(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
