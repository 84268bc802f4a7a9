"""`python -m yoco_jax <command> [arguments]`: every console script through one entry point.

    python -m yoco_jax train --config demo        # = yoco-train --config demo
    python -m yoco_jax serve --checkpoint runs/demo

`python -m yoco_jax` alone (or `--help`) lists the commands.
"""

from __future__ import annotations

import importlib
import sys

# command -> its module in yoco_jax/cli (the console script is `yoco-<command>`, pyproject.toml)
COMMANDS = {
    "train": "train",
    "infer": "infer",
    "export": "export",
    "prepare": "prepare",
    "tokenizer": "tokenizer",
    "needle": "needle",
    "eval": "harness",
    "perplexity": "perplexity",
    "serve": "serve",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    usage = f"usage: python -m yoco_jax {{{','.join(COMMANDS)}}} [arguments]\n"
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(usage + __doc__.split("\n\n")[0] + "\n")
        sys.exit(0 if argv else 2)
    if argv[0] not in COMMANDS:
        sys.stderr.write(f"{usage}python -m yoco_jax: error: unknown command {argv[0]!r}\n")
        sys.exit(2)
    # Imported on demand: a command loads only what it needs (serve does not load training).
    module = importlib.import_module(f"yoco_jax.cli.{COMMANDS[argv[0]]}")
    sys.argv[0] = f"yoco-{argv[0]}"
    module.main(argv[1:])


if __name__ == "__main__":
    main()
