"""Damaged checkpoints: the warning that names a skipped step, short error texts, and quiet
failed restores."""

from __future__ import annotations

import sys


class CheckpointWarning(UserWarning):
    """A damaged checkpoint step was skipped; the message names it and the step used instead."""


def quiet_failed_restores() -> None:
    """Silences the RuntimeError('Event loop is closed') reports that follow a failed restore:
    orbax gives up at the first unreadable array, closing its event loop, while tensorstore
    still completes the reads already started and calls back into that loop; Python reports
    each callback (pages of tracebacks), though nothing is left for them to do."""
    previous = sys.unraisablehook
    if getattr(previous, "yoco_jax_filter", False):
        return

    def hook(unraisable):
        closed = isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
            unraisable.exc_value
        )
        if not closed:
            previous(unraisable)

    hook.yoco_jax_filter = True
    sys.unraisablehook = hook


def listed(damaged: list[tuple[int, Exception]]) -> str:
    return "; ".join(f"step {step}: {brief(error)}" for step, error in damaged)


def brief(error: Exception) -> str:
    """The gist of an error (tensorstore's run to kilobytes of JSON specs)."""
    text = (str(error).splitlines() or [type(error).__name__])[0]
    return text if len(text) <= 160 else text[:160] + "..."
