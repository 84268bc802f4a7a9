"""What the stand-alone benchmarks share to write their results into docs/benchmarks.md."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path


def replace_section(doc: Path, title: str, text: str) -> None:
    """Replaces the `## title` section of `doc` by `text` (from the title up to the next `## `),
    or appends `text` when there is no such section yet."""
    text = text.rstrip("\n") + "\n\n"
    old = doc.read_text() if doc.exists() else ""
    pattern = re.compile(re.escape(title) + r".*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    doc.write_text(new.rstrip("\n") + "\n")


def shown_flags(argv: list[str]) -> list[str]:
    """The command-line flags as results and docs show them: the output (--out) as `$OUT`, not
    this machine's path, and --docs (where the docs are written) left out."""
    out, skip = [], False
    for arg in argv:
        flag = arg.split("=")[0]
        if flag == "--out":
            out += ["--out", "$OUT"]
        elif not skip and flag != "--docs":
            out.append(shlex.quote(arg))
        skip = arg in ("--out", "--docs")
    return out


def add_output_flags(parser, results: str, root: Path) -> None:
    """--out, --docs, --render and --note, shared by the stand-alone benchmarks; `results` names
    the default results file (e.g. "quality-<backend>.json")."""
    parser.add_argument("--out", help=f"default: bench/results/{results}")
    parser.add_argument("--docs", default=str(root / "docs"), help="'' to leave docs/ alone")
    parser.add_argument("--render", nargs="+", help="only rewrite the docs from results JSONs")
    parser.add_argument("--note", help="a remark for the docs (e.g. how busy the machine was)")


def render_only(args, write_docs) -> bool:
    """With --render: rewrites the docs from the given results JSONs and says so (True)."""
    for path in args.render or []:
        write_docs(json.loads(Path(path).read_text()), Path(args.docs))
    return bool(args.render)
