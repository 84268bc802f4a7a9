"""The errors yoco-jax raises for bad input; each message names the problem and the fix."""


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the valid choices."""


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file or key."""
