"""The turn loop: a session's actor runs the model and its tools until the turn stops (see :mod:`.loop`)."""

from openma.core.turns.loop import DEFAULT_MAX_STEPS, StopReason, TurnOptions, TurnResult, run_turn
from openma.core.turns.retry import RetryPolicy

__all__ = ["DEFAULT_MAX_STEPS", "RetryPolicy", "StopReason", "TurnOptions", "TurnResult", "run_turn"]
