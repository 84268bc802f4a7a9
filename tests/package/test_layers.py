"""The package's layers (docs/architecture.md): a module imports only modules of its own layer
or of lower ones, no imports go in a circle, no library module imports yoco_jax/cli (commands
live there only), and no module imports another's private (leading underscore) name. Every
import counts, inside functions and `if __name__ == "__main__":` blocks too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "yoco_jax"

# Lowest first. A module belongs to the layer of its longest listed prefix; `__main__` modules
# are command-line entry points (the cli layer).
LAYERS = [
    (
        "base",
        [
            "yoco_jax.errors",
            "yoco_jax.config",
            "yoco_jax.config_files",
            "yoco_jax.compile_cache",
            "yoco_jax.distributed",
            "yoco_jax.sharding",
        ],
    ),
    ("kernels, data", ["yoco_jax.kernels", "yoco_jax.data"]),
    ("ops", ["yoco_jax.ops"]),
    ("model", ["yoco_jax.model"]),
    (
        "checkpoint",
        [
            "yoco_jax.train.checkpoint",
            "yoco_jax.train.checksums",
            "yoco_jax.train.damage",
            "yoco_jax.train.load",
            "yoco_jax.export",
            "yoco_jax.fla_layout",
            "yoco_jax.pretrained",
        ],
    ),
    ("inference", ["yoco_jax.inference"]),
    ("train", ["yoco_jax.train"]),
    ("eval, serve", ["yoco_jax.eval", "yoco_jax.serve"]),
    ("api", ["yoco_jax.api", "yoco_jax"]),
    ("cli", ["yoco_jax.cli"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    if module.endswith(".__main__"):
        return len(LAYERS) - 1
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = prefix == "yoco_jax"  # the package itself, not everything in it
            match = (
                module == prefix if exact else module == prefix or module.startswith(prefix + ".")
            )
            if match and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer: add it to LAYERS (and the docs' table)"
    return index


class _Imports(ast.NodeVisitor):
    """The yoco_jax modules a module imports (a `from package import name` naming a submodule
    imports that submodule), and the private names it takes from them: `from m import _x`, or
    `m._x` on a module bound by an import."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: set[str] = set()
        self.private: set[str] = set()
        self.bound: dict[str, str] = {}  # local name -> the yoco_jax module it is bound to

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)
            if alias.asname and alias.name in MODULES:
                self.bound[alias.asname] = alias.name

    def visit_Attribute(self, node: ast.Attribute) -> None:
        value = node.value
        if isinstance(value, ast.Name) and value.id in self.bound and _private(node.attr):
            self.private.add(f"{self.bound[value.id]}.{node.attr}")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        for alias in node.names:
            full = f"{base}.{alias.name}"
            self._add(full if full in MODULES else base)
            if full in MODULES:
                self.bound[alias.asname or alias.name] = full
            elif base.startswith("yoco_jax") and _private(alias.name):
                self.private.add(full)

    def _add(self, name: str) -> None:
        if name == "yoco_jax" or name.startswith("yoco_jax."):
            while name not in MODULES:  # `import yoco_jax.x.y` of a name inside a module
                name = name.rpartition(".")[0]
            self.found.add(name)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _visit(name: str, path: Path) -> _Imports:
    visitor = _Imports(name, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor


def imports() -> dict[str, set[str]]:
    return {name: _visit(name, path).found - {name} for name, path in MODULES.items()}


def is_library(module: str) -> bool:
    """Every module but the commands: yoco_jax/cli and `__main__` entry points."""
    return not (module.startswith("yoco_jax.cli") or module.endswith(".__main__"))


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_no_import_goes_up_a_layer():
    upward = [
        f"{name} ({LAYERS[layer(name)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
        for name, targets in imports().items()
        for target in sorted(targets)
        if layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_goes_in_a_circle():
    graph, state, circles = imports(), {}, []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)


def test_no_library_module_imports_a_command():
    found = [
        f"{name} imports {target}"
        for name, targets in imports().items()
        if is_library(name)
        for target in sorted(targets)
        if target.startswith("yoco_jax.cli")
    ]
    assert not found, "\n".join(found)


def test_no_private_name_crosses_modules():
    found = [
        f"{name} uses {private}"
        for name, path in MODULES.items()
        for private in sorted(_visit(name, path).private)
        if private.rpartition(".")[0] != name
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from yoco_jax.api import load_pretrained", {"yoco_jax.api"}),
        ("def f():\n    from yoco_jax import inference", {"yoco_jax.inference"}),
        ("import yoco_jax.model.cache", {"yoco_jax.model.cache"}),
        (
            "if __name__ == '__main__':\n    from yoco_jax.cli.export import main",
            {"yoco_jax.cli.export"},
        ),
        ("from . import plan", {"yoco_jax.inference.plan"}),
    ],
)
def test_the_import_finder_sees_what_it_should(source, expected):
    """Imports inside functions and `__main__` blocks count; relative imports resolve."""
    visitor = _Imports("yoco_jax.inference.generate", False)
    visitor.visit(ast.parse(source))
    assert visitor.found == expected


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from yoco_jax.ops.attention import _per_device", {"yoco_jax.ops.attention._per_device"}),
        ("from yoco_jax.ops import attention\nattention._x(1)", {"yoco_jax.ops.attention._x"}),
        ("import yoco_jax.ops.attention as a\na._x", {"yoco_jax.ops.attention._x"}),
        ("from yoco_jax.ops.attention import attend\nfrom yoco_jax import __version__", set()),
        ("import os\nos._exit", set()),
    ],
)
def test_the_private_name_finder_sees_what_it_should(source, expected):
    visitor = _Imports("yoco_jax.model.attention", False)
    visitor.visit(ast.parse(source))
    assert visitor.private == expected


def test_commands_are_not_library_modules():
    assert not is_library("yoco_jax.cli.serve") and not is_library("yoco_jax.serve.__main__")
    assert is_library("yoco_jax.export") and is_library("yoco_jax.serve.app")


def test_an_upward_import_would_be_caught():
    """The rule itself: inference importing the api, or the model importing inference, is up."""
    assert layer("yoco_jax.api") > layer("yoco_jax.inference.generate")
    assert layer("yoco_jax.inference.plan") > layer("yoco_jax.model.cache")
    assert layer("yoco_jax.serve.__main__") == layer("yoco_jax.cli.infer")
    assert (
        layer("yoco_jax.train.checkpoint") < layer("yoco_jax.inference") < layer("yoco_jax.train")
    )
