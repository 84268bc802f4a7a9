"""Pretrain a YOCO model.

    python train.py                                   # the demo: a tiny YOCO on the stdlib sources
    python train.py --config NAME_OR_YAML key=value   # configs/train-<NAME>.yaml, then overrides
    python train.py --restart                         # start over instead of resuming

Keys are those of yoco_jax.train.config.TrainConfig; `model.<key>=` and `data.<key>=` reach the
model and data settings. Multi-host: the same command on every host with --coordinator_address,
--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).
"""

import argparse

from yoco_jax import distributed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="training config name or YAML path")
    parser.add_argument("--restart", action="store_true", help="start over (clears output_dir)")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    from yoco_jax.train.config import load_train_config
    from yoco_jax.train.loop import train

    train(load_train_config(args.config, args.overrides), restart=args.restart)


if __name__ == "__main__":
    main()
