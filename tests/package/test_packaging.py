"""What a fresh install needs: every import declared, every module importable, configs shipped
inside the package, every console script answering --help."""

import ast
import importlib
import importlib.metadata as metadata
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import yoco_jax
from yoco_jax.config import CONFIG_DIR, available_configs, get_config

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(yoco_jax.__path__, "yoco_jax."))


def _requirement_names(requirements) -> set[str]:
    names = set()
    for req in requirements:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of the modules `path` imports, standard library and our own left out."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "yoco_jax"}


def test_every_third_party_import_is_declared():
    """A module imported anywhere in yoco_jax/ belongs to a distribution that pyproject.toml
    names directly (in the dependencies or in an extra), not one that happens to be present."""
    declared = _requirement_names(PYPROJECT["dependencies"])
    for extra in PYPROJECT["optional-dependencies"].values():
        declared |= _requirement_names(extra)
    distributions = metadata.packages_distributions()
    undeclared = {}
    for path in sorted((ROOT / "yoco_jax").rglob("*.py")):
        for name in _third_party_imports(path):
            dists = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
            if not dists & declared:
                undeclared.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_module_imports():
    failures = {}
    for name in _modules():
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - report every failing module at once
            failures[name] = repr(error)
    assert not failures, failures


def test_modules_import_without_optional_packages():
    """Optional features import their dependency where they use it: with torch, lm-eval,
    starlette, uvicorn, httpx and tensorboard hidden, every module still imports, or (a module
    that is the optional feature itself) fails with a message naming the extra to install."""
    hidden = ["torch", "lm_eval", "starlette", "uvicorn", "httpx", "tensorboard"]
    code = (
        "import sys, importlib, pkgutil\n"
        f"for name in {hidden!r}: sys.modules[name] = None\n"
        "import yoco_jax\n"
        "bad = {}\n"
        "for m in pkgutil.walk_packages(yoco_jax.__path__, 'yoco_jax.'):\n"
        "    try: importlib.import_module(m.name)\n"
        "    except ImportError as e:\n"
        '        if "pip install -e \'.[" not in str(e): bad[m.name] = str(e)\n'
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu"}
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_configs_ship_inside_the_package():
    assert CONFIG_DIR.parent == Path(yoco_jax.__file__).resolve().parent
    shipped = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    in_checkout = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    assert shipped == in_checkout
    names = available_configs()
    assert "yoco-3b" in names and "transformer-tiny" in names
    for name in names:
        config = get_config(name)
        assert config.n_layers % 2 == 0


def test_package_data_declares_configs():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "configs/*.yaml" in package_data["package-data"]["yoco_jax"]


@pytest.mark.parametrize("script", sorted(PYPROJECT["scripts"]))
def test_console_script_answers_help(script, capsys):
    module_name, _, function = PYPROJECT["scripts"][script].partition(":")
    main = getattr(importlib.import_module(module_name), function)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_console_scripts_are_installed():
    """The installed distribution's entry points are the ones pyproject.toml declares."""
    installed = {
        ep.name: ep.value
        for ep in metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name == "yoco-jax"
    }
    assert installed == PYPROJECT["scripts"]


def test_the_dispatcher_runs_every_console_script():
    """`python -m yoco_jax <command>` names the same main as the console script yoco-<command>."""
    from yoco_jax.__main__ import COMMANDS

    dispatched = {f"yoco-{name}": f"yoco_jax.cli.{m}:main" for name, m in COMMANDS.items()}
    assert dispatched == PYPROJECT["scripts"]


@pytest.mark.parametrize(
    "argv, code, expected",
    [
        (["export", "--help"], 0, "usage: yoco-export"),
        (["serve", "--help"], 0, "usage: yoco-serve"),
        (["--help"], 0, "python -m yoco_jax {train,infer,export,"),
        (["exports"], 2, "unknown command 'exports'"),
        ([], 2, "usage: python -m yoco_jax"),
    ],
)
def test_python_m_yoco_jax(argv, code, expected):
    result = subprocess.run(
        [sys.executable, "-m", "yoco_jax", *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == code, result.stderr
    assert expected in result.stdout + result.stderr
