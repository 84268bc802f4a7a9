"""Local lm-evaluation-harness tasks for the tests: a JSONL data file and its task YAML."""

import json
from pathlib import Path

import yaml


def write_task(folder: Path, name: str, rows: list[dict], **config) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"task": name, "dataset_path": "json", "test_split": "test"}
    task["dataset_kwargs"] = {"data_files": {"test": str(data)}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({**task, **config}))
