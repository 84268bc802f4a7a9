"""`yoco-perplexity` (`python -m yoco_jax perplexity`): long-context perplexity by position
of one checkpoint or two, as JSON and a plot (see yoco_jax/eval/perplexity.py).

    yoco-perplexity --checkpoint runs/yoco --data books/ --max-length 65536
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from yoco_jax.api import load_pretrained
from yoco_jax.cli.common import one_line_warnings, reported
from yoco_jax.data.corpus import iter_texts
from yoco_jax.data.tokenizer_resolver import find_tokenizer
from yoco_jax.errors import CheckpointError
from yoco_jax.eval.perplexity import nll_by_position, plot, positions, sequences
from yoco_jax.inference.plan import PREFILL_CHUNK_HELP


def _label(path: str, model) -> str:
    return f"{Path(path).name} ({model.config.arch})"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="yoco-perplexity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="training output or official folder")
    parser.add_argument("--compare", help="a second checkpoint (e.g. the Transformer)")
    parser.add_argument("--data", nargs="+", required=True, help="text/JSONL files or folders")
    parser.add_argument("--max-length", type=int, required=True, help="N: tokens per document")
    parser.add_argument("--concat", action="store_true", help="join documents into N-token rows")
    parser.add_argument("--max-docs", type=int, default=16, help="rows scored at most")
    parser.add_argument("--first", type=int, default=1024, help="the first reported position")
    parser.add_argument("--tokenizer", help="sentencepiece .model (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prefill-chunk", type=int, default=None, help=PREFILL_CHUNK_HELP)
    parser.add_argument("--out", default="perplexity", help="writes <out>.json and <out>.png")
    args = parser.parse_args(argv)
    one_line_warnings(parser.prog)
    with reported(parser.prog):
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
        models = {path: load_pretrained(path) for path in [args.checkpoint, args.compare] if path}
        for path, model in models.items():
            if model.config.vocab_size != tokenizer.vocab_size:
                raise CheckpointError(
                    f"{path} has a vocabulary of {model.config.vocab_size}, the tokenizer "
                    f"{tokenizer.vocab_size}: compare models trained with the same tokenizer"
                )
        points = positions(args.max_length, args.first)
        curves = {
            _label(path, model): {
                "checkpoint": path,
                "arch": model.config.arch,
                "positions": points,
                "nll": nll_by_position(
                    model, rows, points, batch_size=args.batch_size, chunk_size=args.prefill_chunk
                ),
            }
            for path, model in models.items()
        }
    results = {"max_length": args.max_length, "documents": len(rows), "curves": curves}
    out = Path(args.out)
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
