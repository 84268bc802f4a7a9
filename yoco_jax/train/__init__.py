"""Pretraining: optimizer, loss, sharded train step, orbax checkpoints, logging and the loop."""
