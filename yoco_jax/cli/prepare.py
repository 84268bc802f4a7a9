"""`yoco-prepare` (`python -m yoco_jax prepare`): a corpus tokenized once into ArrayRecord
shards (see yoco_jax/data/prepare.py)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from yoco_jax.cli.common import one_line_warnings, reported
from yoco_jax.data import prepare as module
from yoco_jax.data.tokenizer import Tokenizer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="yoco-prepare",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", nargs="+", required=True, help="files, folders, globs, ...")
    parser.add_argument("--tokenizer", required=True, help="sentencepiece .model file")
    parser.add_argument("--out", required=True, help="new or empty output folder")
    parser.add_argument("--kind", default="auto", choices=["auto", "text", "jsonl", "official"])
    parser.add_argument("--shard-documents", type=int, default=65536)
    args = parser.parse_args(argv)
    one_line_warnings(parser.prog)
    data = args.input[0] if len(args.input) == 1 else args.input
    with reported(parser.prog):
        manifest = module.prepare(
            data,
            Tokenizer.load(args.tokenizer),
            args.out,
            kind=args.kind,
            shard_documents=args.shard_documents,
        )
    print(
        f"wrote {args.out}: {manifest['num_documents']} documents, "
        f"{manifest['num_tokens']} tokens in {len(manifest['sources'])} source(s)"
    )


if __name__ == "__main__":
    main()
