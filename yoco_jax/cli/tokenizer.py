"""`yoco-tokenizer` (`python -m yoco_jax tokenizer`): trains a sentencepiece tokenizer with
this project's special ids (see yoco_jax/data/tokenizer.py).

    yoco-tokenizer train --input stdlib --vocab-size 2048 --out /tmp/tok
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from yoco_jax.cli.common import one_line_warnings, reported
from yoco_jax.data.tokenizer import Tokenizer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yoco-tokenizer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a sentencepiece model")
    train.add_argument("--input", nargs="+", required=True, help="files, folders, globs, stdlib")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--out", required=True, help="output prefix: writes <out>.model")
    train.add_argument("--model-type", default="bpe", choices=["bpe", "unigram"])
    train.add_argument("--max-sentences", type=int, default=2_000_000)
    args = parser.parse_args(argv)
    one_line_warnings(parser.prog)
    with reported(parser.prog):
        tokenizer = Tokenizer.train(
            args.input,
            args.vocab_size,
            args.out,
            model_type=args.model_type,
            max_sentences=args.max_sentences,
        )
    print(f"wrote {tokenizer.path} (vocab {tokenizer.vocab_size}, sha256 {tokenizer.sha256[:12]})")


if __name__ == "__main__":
    main()
