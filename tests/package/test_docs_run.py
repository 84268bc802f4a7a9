"""Every fenced bash and python block of README.md and docs/*.md runs as written on CPU.

A doc's blocks run in order in one folder of their own, as a reader goes through it from the
repository root: the folder holds train.py and infer.py (links), the demo run `runs/demo` made
once per session by the docs' own `python train.py`, and the inputs the docs name as the
reader's: prompts.jsonl, long.txt, report.txt. Every training command runs with YOCO_DOCS_STEPS=2
(train.py then stops after 2 steps) and the commands share one compilation cache. Python blocks
run in this process, each in a fresh namespace; each bash command (continued lines joined) runs
through `bash -c`; a server (`python -m yoco_jax.serve`) runs in the background until the next
server or the doc's end, and the commands after it start once it answers /health; a `curl`
must get no error object; a `pip install` is not run (the tests run with every extra installed),
only its extras checked against pyproject.toml.

The line before a fence may mark it (the test fails on any unmarked block that fails):
    <!-- no-run: why -->   illustrative only: data the repo lacks, many hosts, a GPU's hours
    <!-- gpu-only -->      must refuse on CPU: exit 2 with a one-line error, no traceback
"""

import os
import re
import shutil
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!--\s*(no-run:.*?|gpu-only)\s*-->\n)?^```(\w*)\n(.*?)^```", re.S | re.M)
RUN_LANGS = ("bash", "python")
STEPS = "2"  # YOCO_DOCS_STEPS
SERVER = (
    "yoco-serve",
    "python -m yoco_jax serve",
    "python -m yoco_jax.serve",
)  # run in the background


def blocks(doc: str) -> list[tuple[int, str, str, str]]:
    """(line, language, marker, text) of each fenced block of `doc`."""
    text = (ROOT / doc).read_text()
    return [
        (text[: m.start(2)].count("\n") + 1, m.group(2), m.group(1) or "", m.group(3))
        for m in FENCE.finditer(text)
    ]


def commands(block: str) -> list[str]:
    """The block's commands: continued lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_every_block_is_runnable_or_marked():
    for doc in DOCS:
        for line, lang, marker, _ in blocks(doc):
            assert lang not in ("sh", "shell", "console"), f"{doc}:{line}: fence it as bash"
            assert marker != "no-run:", f"{doc}:{line}: say why the block does not run"
    assert sum(len([b for b in blocks(d) if b[1] in RUN_LANGS and not b[2]]) for d in DOCS) >= 20


def _env(cache: Path) -> dict:
    env = dict(os.environ, YOCO_DOCS_STEPS=STEPS, YOCO_COMPILE_CACHE=str(cache))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """A folder as the repository root is after the quickstart, and the shared environment."""
    folder = tmp_path_factory.mktemp("docs-setup")
    env = _env(folder.parent / "compile-cache")
    for script in ("train.py", "infer.py"):
        (folder / script).symlink_to(ROOT / script)
    (folder / "bench").symlink_to(ROOT / "bench")
    (folder / "prompts.jsonl").write_text('{"prompt": "def main():"}\n{"tokens": [5, 17, 42]}\n')
    (folder / "long.txt").write_text("import os\n" * 60)
    (folder / "report.txt").write_text("Q1 revenue: 12.\nQ2 revenue: 30.\n")
    done = subprocess.run(
        ["python", "train.py"], cwd=folder, env=env, capture_output=True, text=True
    )  # docs/training.md's first command
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, env


class Server:
    """A documented server command in the background."""

    def __init__(self, command: str, cwd: Path, env: dict):
        port = re.search(r"--port (\d+)", command)
        self.url = f"http://localhost:{port.group(1) if port else 8000}/health"
        self.log = cwd / "server.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 180
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"{command!r} did not start: {self.log.read_text()[-2000:]}")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def check_install(command: str, where: str) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for names in re.findall(r"\.\[([\w,-]+)\]", command):
        assert set(names.split(",")) <= set(extras), f"{where}: {command!r}: no such extra"


def run_bash(command: str, where: str, cwd: Path, env: dict, gpu_only: bool) -> None:
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    if gpu_only:
        error = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(error) == 1, f"{where}: {command!r} {done.stderr}"
        assert "Traceback" not in done.stderr
    else:
        assert done.returncode == 0, f"{where}: {command!r} failed:\n{done.stderr[-3000:]}"
        assert not command.startswith("curl") or '"error"' not in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if any(b[1] in RUN_LANGS for b in blocks(d))])
def test_doc_runs_as_written(doc, setup, tmp_path, monkeypatch):
    shared, env = setup
    folder = tmp_path / "repo"
    shutil.copytree(shared, folder, symlinks=True)
    monkeypatch.chdir(folder)
    server = None
    try:
        for line, lang, marker, text in blocks(doc):
            where = f"{doc}:{line}"
            if lang not in RUN_LANGS or marker.startswith("no-run"):
                continue
            if lang == "python":
                exec(compile(text, where, "exec"), {"__name__": "__main__"})
                continue
            for command in commands(text):
                if command.startswith("pip install"):
                    check_install(command, where)
                elif command.startswith(SERVER):
                    server = server and server.stop()
                    server = Server(command, folder, env)
                else:
                    run_bash(command, where, folder, env, marker == "gpu-only")
    finally:
        if server:
            server.stop()
