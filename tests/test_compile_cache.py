"""The persistent compilation cache the CLIs turn on: entries appear after a compile, and
YOCO_COMPILE_CACHE=0 / --no-compile-cache keep it off. Runs in subprocesses (the setting is
global to a process, and the test suite itself runs without it)."""

import os
import subprocess
import sys

import pytest

from yoco_jax import compile_cache
from yoco_jax.cli.infer import main as infer_main
from yoco_jax.cli.train import main as train_main

COMPILE = (
    "from yoco_jax import compile_cache; path = compile_cache.enable(); "
    "import jax, jax.numpy as jnp; "
    "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready(); print(path)"
)


def _python(tmp_path, args, **settings):
    """Runs python with the user's cache folder in tmp_path and no cache settings inherited."""
    unset = ("YOCO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        XDG_CACHE_HOME=str(tmp_path),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        **settings,
    )
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)


def test_cache_gets_entries_after_a_compile(tmp_path):
    result = _python(tmp_path, ["-c", COMPILE])
    folder = tmp_path / "yoco-jax" / "jax-cache"
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(folder)
    assert any(folder.iterdir()), "no cache entry written"


def test_env_off_switch(tmp_path):
    result = _python(tmp_path, ["-c", COMPILE], YOCO_COMPILE_CACHE="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
    assert not (tmp_path / "yoco-jax").exists()


def test_env_names_another_folder(tmp_path):
    folder = tmp_path / "elsewhere"
    result = _python(tmp_path, ["-c", COMPILE], YOCO_COMPILE_CACHE=str(folder))
    assert result.returncode == 0, result.stderr
    assert any(folder.iterdir()) and not (tmp_path / "yoco-jax").exists()


@pytest.mark.parametrize("flag", [[], ["--no-compile-cache"]])
def test_infer_cli_turns_it_on_unless_told_not_to(tmp_path, flag):
    """infer.py with a missing checkpoint fails (exit 2) after setting up the cache."""
    args = ["-m", "yoco_jax.cli.infer", "--checkpoint", str(tmp_path / "none"), "--prompt", "x"]
    result = _python(tmp_path, args + flag)
    assert result.returncode == 2, result.stderr
    assert (tmp_path / "yoco-jax" / "jax-cache").exists() == (not flag)


def test_off_in_process_changes_nothing(monkeypatch):
    import jax

    before = jax.config.jax_compilation_cache_dir
    assert compile_cache.enable(off=True) is None
    monkeypatch.setenv("YOCO_COMPILE_CACHE", "off")
    assert compile_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.parametrize("main", [train_main, infer_main])
def test_both_clis_offer_the_flag(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--no-compile-cache" in capsys.readouterr().out
