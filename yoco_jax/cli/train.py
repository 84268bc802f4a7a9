"""Pretrain a YOCO model.

    python train.py                                   # the demo: a tiny YOCO on the stdlib sources
    python train.py --config NAME_OR_YAML key=value   # configs/train-<NAME>.yaml, then overrides
    python train.py --restart                         # start over instead of resuming

Keys are those of yoco_jax.train.config.TrainConfig (see docs/training.md); `model.<key>=`,
`data.<key>=` and `mesh.<axis>=` reach the model, data and mesh settings. Multi-host: the same
command on every host with --coordinator-address, --num-processes and --process-id (or
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). YOCO_DOCS_STEPS=N caps steps at N
(how the docs tests run every documented training command quickly).
"""

import argparse
import os

from yoco_jax import compile_cache, distributed
from yoco_jax.cli.common import one_line_warnings, reported

DOCS_STEPS = "YOCO_DOCS_STEPS"  # N: at most N steps (tests/test_docs_run.py runs the docs so)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="training config name or YAML path")
    parser.add_argument("--restart", action="store_true", help="start over (clears output_dir)")
    parser.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    compile_cache.add_flag(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    compile_cache.enable(args.no_compile_cache)

    from yoco_jax.train.config import load_train_config
    from yoco_jax.train.loop import train

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    one_line_warnings("train.py")
    # A bad key, missing data, a mismatched checkpoint: exit 2; a non-finite loss, a full disk:
    # exit 1. The message names the problem and the fix; the traceback only on request.
    with reported("train.py"):
        config = load_train_config(args.config, args.overrides)
        if os.environ.get(DOCS_STEPS):  # the docs tests shorten every documented training run
            steps = f"steps={min(config.steps, int(os.environ[DOCS_STEPS]))}"
            config = load_train_config(args.config, [*args.overrides, steps])
        train(config, restart=args.restart)


if __name__ == "__main__":
    main()
