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


def save_results(res: dict, args, name: str, root: Path, write_docs) -> Path:
    """Writes a stand-alone benchmark's results JSON (--out, default
    bench/results/<name>-<backend>.json) and, unless --docs '', its docs section."""
    out = Path(args.out or root / "bench" / "results" / f"{name}-{res['backend']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    if args.docs:
        write_docs(res, Path(args.docs))
    return out
