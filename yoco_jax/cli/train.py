"""Pretrain a YOCO model.

    python train.py                                   # the demo: a tiny YOCO on the stdlib sources
    python train.py --config NAME_OR_YAML key=value   # configs/train-<NAME>.yaml, then overrides
    python train.py --restart                         # start over instead of resuming

Keys are those of yoco_jax.train.config.TrainConfig (see docs/training.md); `model.<key>=`,
`data.<key>=` and `mesh.<axis>=` reach the model, data and mesh settings. Multi-host: the same
command on every host with --coordinator_address, --num_processes and --process_id (or
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

import argparse
import os
import warnings

from yoco_jax import compile_cache, distributed


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help="training config name or YAML path")
    parser.add_argument("--restart", action="store_true", help="start over (clears output_dir)")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    compile_cache.add_flag(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    compile_cache.enable(args.no_compile_cache)

    from yoco_jax.config import ConfigError
    from yoco_jax.train.config import load_train_config
    from yoco_jax.train.loop import train

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    # Warnings (skipped data, a damaged checkpoint step, ...) as one line each, like the errors.
    warnings.formatwarning = lambda message, *_: f"train.py: warning: {message}\n"
    try:
        train(load_train_config(args.config, args.overrides), restart=args.restart)
    except ConfigError as error:  # a bad key or value: the message says which and what to do
        parser.error(str(error))
    except (OSError, ValueError, FloatingPointError) as error:
        # Missing or empty data, a mismatched checkpoint, a non-finite loss: the message names
        # the problem and the fix; the traceback only on request.
        if os.environ.get("YOCO_TRACEBACK"):
            raise
        parser.exit(1, f"train.py: error: {error}\n(YOCO_TRACEBACK=1 shows the traceback)\n")


if __name__ == "__main__":
    main()
