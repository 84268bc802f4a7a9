"""`yoco-export` (`python -m yoco_jax export`): a training run or exported folder written in
the official PyTorch layout (params.json + model.safetensors + tokenizer.model), or with
--format fla in flash-linear-attention's (a transformers model: config.json, model.safetensors,
generation_config.json, tokenizer.json; docs/pytorch.md)."""

from __future__ import annotations

import argparse
import sys

from yoco_jax.api import load_pretrained
from yoco_jax.cli.common import add_unverified_flag, one_line_warnings, reported
from yoco_jax.data.tokenizer_resolver import find_tokenizer
from yoco_jax.export import check_export_target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="yoco-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a training output folder or an exported folder")
    parser.add_argument("out", help="a new folder for the export")
    parser.add_argument(
        "--format",
        default="official",
        choices=["official", "fla"],
        help="official: YOCO's params.json layout; fla: flash-linear-attention's YOCOForCausalLM",
    )
    parser.add_argument(
        "--save-dtype", default="float32", choices=["float32", "bfloat16"], help="of the weights"
    )
    parser.add_argument("--tokenizer", help="the .model to ship (default: the source's own)")
    parser.add_argument("--force", action="store_true", help="replace an earlier export in out")
    add_unverified_flag(parser)
    args = parser.parse_args(argv)
    one_line_warnings(parser.prog)
    with reported(parser.prog):
        check_export_target(args.out, args.force)  # before the (slow) load
        model = load_pretrained(args.source, allow_unverified=args.allow_unverified)
        if args.tokenizer:
            model.tokenizer = find_tokenizer(None, model.config.vocab_size, args.tokenizer)
        save = model.save_fla if args.format == "fla" else model.save_official
        folder = save(args.out, dtype=args.save_dtype, overwrite=args.force)
    files = ", ".join(sorted(p.name for p in folder.iterdir()))
    print(f"wrote {args.out}: {files} ({args.save_dtype})")
    if model.tokenizer is None:
        print(
            f"note: {args.source} has no tokenizer.model, so the export carries none; pass "
            "--tokenizer PATH to include one (infer.py will need --tokenizer for text prompts)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
