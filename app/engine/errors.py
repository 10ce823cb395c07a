"""The two exceptions the engine raises on purpose.

``EngineError`` messages reach end users verbatim (the worker stores them on the job), so each one
says what happened and what to do about it. ``TrainingCancelled`` is not a failure: a callback's
``should_stop()`` asked for it.
"""

from __future__ import annotations


class EngineError(Exception):
    """A problem with the job's inputs or environment that the user can act on."""

    # The stable reason stored beside the message of a failed job (jobs.error_code).
    code = "invalid_spec"


class WeightsUnavailable(EngineError):
    """Pretrained weights could not be loaded (no network, no cache, or a bad download)."""

    code = "pretrained_weights_unavailable"


class TrainingCancelled(Exception):
    """Raised at a step boundary after a callback's ``should_stop()`` returned True."""
