"""`yoco-perplexity` (`python -m yoco_jax perplexity`): long-context perplexity by position
of one checkpoint or two, as JSON and a plot (see yoco_jax/eval/perplexity.py).

    yoco-perplexity --checkpoint runs/yoco --data books/ --max-length 65536
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path

from yoco_jax.api import load_pretrained
from yoco_jax.cli.common import (
    add_unverified_flag,
    check_output,
    one_line_warnings,
    positive_int,
    reported,
)
from yoco_jax.data.corpus import STDLIB, iter_texts
from yoco_jax.data.tokenizer_resolver import check_tokenizer, find_tokenizer
from yoco_jax.errors import CheckpointError
from yoco_jax.eval.perplexity import nll_by_position, plot, positions, sequences
from yoco_jax.inference.plan import PREFILL_CHUNK_HELP


def _label(path: str, model) -> str:
    return f"{Path(path).name} ({model.config.arch})"


def _check_data(paths: list[str]) -> None:
    for path in paths:  # iter_texts would take a missing path for a text to score
        if not (path == STDLIB or os.path.exists(path) or glob.glob(path)):
            raise FileNotFoundError(
                f"--data {path} does not exist: give text/JSONL files or folders"
            )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="yoco-perplexity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="training output or official folder")
    parser.add_argument("--compare", help="a second checkpoint (e.g. the Transformer)")
    parser.add_argument("--data", nargs="+", required=True, help="text/JSONL files or folders")
    parser.add_argument("--max-length", type=positive_int, required=True, help="N: tokens per row")
    parser.add_argument("--concat", action="store_true", help="join documents into N-token rows")
    parser.add_argument("--max-docs", type=positive_int, default=16, help="rows scored at most")
    parser.add_argument("--first", type=positive_int, default=1024, help="first reported position")
    parser.add_argument("--tokenizer", help="sentencepiece .model (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--prefill-chunk", type=positive_int, default=None, help=PREFILL_CHUNK_HELP)
    parser.add_argument("--out", default="perplexity", help="writes <out>.json and <out>.png")
    add_unverified_flag(parser)
    args = parser.parse_args(argv)
    one_line_warnings(parser.prog)
    out = Path(args.out)
    with reported(parser.prog):
        for suffix in (".json", ".png"):  # before the work, not after it
            check_output("--out", out.with_suffix(suffix))
        _check_data(args.data)
        # The data first: a bad --max-length fails before any model loads.
        tokenizer = find_tokenizer(args.checkpoint, None, args.tokenizer)
        if tokenizer is None:
            raise CheckpointError(
                f"{args.checkpoint} carries no tokenizer (no tokenizer.model): pass --tokenizer"
            )
        rows = sequences(
            iter_texts(args.data),
            tokenizer,
            args.max_length,
            concat=args.concat,
            max_docs=args.max_docs,
        )
        models = {
            path: load_pretrained(path, allow_unverified=args.allow_unverified)
            for path in [args.checkpoint, args.compare]
            if path
        }
        for model in models.values():
            check_tokenizer(tokenizer, model.config.vocab_size)
        points = positions(args.max_length, args.first)
        curves = {
            _label(path, model): {
                "checkpoint": path,
                "arch": model.config.arch,
                "positions": points,
                "nll": nll_by_position(
                    model,
                    rows,
                    points,
                    batch_size=args.batch_size,
                    prefill_chunk=args.prefill_chunk,
                ),
            }
            for path, model in models.items()
        }
        results = {"max_length": args.max_length, "documents": len(rows), "curves": curves}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
        plot(curves, out.with_suffix(".png"))
    for name, curve in curves.items():
        cells = ", ".join(f"{p}: {v:.3f}" for p, v in zip(curve["positions"], curve["nll"]))
        print(f"{name}: {cells}")
    print(f"{len(rows)} document(s) of {args.max_length} tokens; wrote {out}.json and {out}.png")
    return results


if __name__ == "__main__":
    main()
