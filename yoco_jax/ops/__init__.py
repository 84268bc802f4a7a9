"""Parameter-free building blocks: gated retention in three forms, attention with masks."""
