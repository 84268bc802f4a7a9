"""What a training run keeps in its folder besides checkpoints: the tokenizer's copy, the logs, and
the paths its checkpoints record (relative to the folder, so a copied run names no path of the
machine that trained it). A file the user named as an input is never removed or overwritten,
even when it lies in the run folder."""

from __future__ import annotations

import os
import shutil

import jax

from yoco_jax.data.tokenizer_resolver import TOKENIZER_FILE
from yoco_jax.train.checkpoint import DAMAGED_DIR

LOGS = ("tb", "metrics.jsonl", TOKENIZER_FILE, "config.yaml")


def save_tokenizer(tokenizer, output_dir: str) -> dict:
    """Copies the tokenizer into the run folder (so the folder alone is enough to sample),
    atomically and only when that file holds other bytes; returns what the checkpoints record
    of it (paths relative to the run folder)."""
    target = os.path.join(output_dir, TOKENIZER_FILE)
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        tokenizer.save(target)
    source = relative_path(tokenizer.path, output_dir) if tokenizer.path else None
    return {"path": TOKENIZER_FILE, "source": source, "sha256": tokenizer.sha256}


def portable(train: dict, output_dir: str) -> dict:
    """A TrainConfig.to_dict() with its paths relative to the run folder (what checkpoints
    store; compare a resumed run's settings in this form too)."""
    data = dict(train["data"])
    paths = data["path"]
    data["path"] = (
        [relative_path(p, output_dir) for p in paths]
        if isinstance(paths, list)
        else relative_path(paths, output_dir)
    )
    tokenizer = train["tokenizer"]
    if os.path.exists(tokenizer):
        tokenizer = relative_path(tokenizer, output_dir)
    return {**train, "data": data, "output_dir": ".", "tokenizer": tokenizer}


def relative_path(path: str, output_dir: str) -> str:
    """`path` relative to the run folder when it names a file or folder (or is absolute);
    names such as "stdlib" and relative globs are kept as given."""
    if not (os.path.isabs(path) or os.path.exists(path)):
        return path
    return os.path.relpath(os.path.abspath(path), os.path.abspath(output_dir))


def clear_run(output_dir: str, restart: bool, keep: list[str]) -> None:
    """Removes the logs and tokenizer copy of an earlier run in `output_dir`, and with
    --restart its checkpoints too; never a path in `keep` (the run's inputs) or a folder
    holding one."""
    names = [*LOGS, *(["checkpoints", DAMAGED_DIR] if restart else [])]
    kept = [os.path.realpath(p) for p in keep if os.path.exists(p)]
    if jax.process_index() == 0:
        for name in names:
            path = os.path.join(output_dir, name)
            real = os.path.realpath(path)
            if any(k == real or k.startswith(real + os.sep) for k in kept):
                continue
            if os.path.islink(path) or os.path.isfile(path):
                os.remove(path)  # a link, not what it points to
            elif os.path.isdir(path):
                shutil.rmtree(path)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("yoco_jax clear run")


def inputs(config) -> list[str]:
    """The files and folders a TrainConfig reads (kept by clear_run)."""
    paths = config.data.path if isinstance(config.data.path, tuple) else (config.data.path,)
    return [config.tokenizer, *paths]
