"""`yoco-eval` (`python -m yoco_jax eval`): EleutherAI's lm-evaluation-harness tasks on
a checkpoint (see yoco_jax/eval/harness.py; needs pip install -e '.[eval]').

    yoco-eval --checkpoint runs/demo --tasks hellaswag,lambada_openai
"""

from __future__ import annotations

import argparse
from pathlib import Path

from yoco_jax.cli.common import (
    add_unverified_flag,
    check_output,
    integer,
    one_line_warnings,
    positive_int,
    reported,
)
from yoco_jax.eval.harness import check_limit, evaluate, import_lm_eval, task_manager, write_results
from yoco_jax.inference.plan import PREFILL_CHUNK_HELP


def _limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


def _count(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="yoco-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="training output or official folder")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    # lm-eval's own spellings (underscores) for the flags copied from its command line
    parser.add_argument("--include_path", help="a folder of extra task YAML files")
    parser.add_argument("--num_fewshot", type=_count, help="examples in each prompt (>= 0)")
    parser.add_argument("--limit", type=_limit, help="examples per task (or a fraction < 1)")
    parser.add_argument("--batch_size", type=positive_int, default=8)
    parser.add_argument("--output_path", help="folder for results.json (and samples)")
    parser.add_argument("--log_samples", action="store_true", help="also write every sample")
    parser.add_argument("--tokenizer", help="sentencepiece .model (default: the checkpoint's)")
    parser.add_argument("--prefill-chunk", type=positive_int, default=None, help=PREFILL_CHUNK_HELP)
    parser.add_argument("--max-gen-toks", type=positive_int, default=256)
    parser.add_argument("--dtype", help="compute dtype override, e.g. bfloat16")
    parser.add_argument("--seed", type=integer, default=0)
    add_unverified_flag(parser)
    args = parser.parse_args(argv)
    one_line_warnings(parser.prog)
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    with reported(parser.prog):
        _, YocoLM = import_lm_eval()
        check_limit(args.limit)
        if args.output_path:  # before the evaluation, not after it
            check_output("--output_path", args.output_path, folder=True)
        manager = task_manager(tasks, args.include_path)  # fails before the model loads
        lm = YocoLM(
            checkpoint=args.checkpoint,
            tokenizer=args.tokenizer,
            batch_size=args.batch_size,
            prefill_chunk=args.prefill_chunk,
            max_gen_toks=args.max_gen_toks,
            seed=args.seed,
            dtype=args.dtype,
            allow_unverified=args.allow_unverified,
        )
        results = evaluate(
            lm,
            tasks,
            manager=manager,
            num_fewshot=args.num_fewshot,
            limit=args.limit,
            log_samples=args.log_samples,
            seed=args.seed,
        )
    from lm_eval.utils import make_table

    print(make_table(results))
    if args.output_path:
        for path in write_results(results, Path(args.output_path), args.log_samples):
            print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
