"""The sandbox leak sweeper: find a provider's sandboxes by openma's label and destroy the old ones.

A sandbox leaks when its host dies between creating it and recording its id, or when a destroy fails; a
remote provider keeps billing it until its own lifetime runs out. Every openma sandbox carries the label
:data:`LABEL` = ``"1"`` (see :class:`~openma.ports.sandbox.SandboxSpec`), so a periodic sweep
(``python -m openma sandboxes sweep --older-than 2h``) can find and destroy the ones older than any session
could need.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from openma.errors import InvalidInput, OpenmaError, SandboxError
from openma.ports.sandbox import SandboxProvider

#: The label (with value ``"1"``) every sandbox openma creates carries.
LABEL: Final = "openma"

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"90m"``, ``"2h"``, ``"1.5d"``, ``"3600"`` (seconds) → a ``timedelta``; anything else is ``InvalidInput``."""
    match = _DURATION.match(text or "")
    if not match:
        raise InvalidInput(f"invalid duration {text!r}; use a number with s, m, h, d or w (such as 2h)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


async def sweep_sandboxes(
    provider: SandboxProvider,
    *,
    older_than: timedelta | float,
    labels: Mapping[str, str] | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Destroy the provider's openma sandboxes created more than ``older_than`` ago; return their ids.

    ``labels`` narrows the sweep (a tenant, say); openma's own label is always required, so sandboxes that
    openma did not create are never touched, and neither are those whose creation time the provider does
    not report. With ``dry_run`` nothing is destroyed. Every candidate is tried; if some could not be
    destroyed, :class:`SandboxError` lists them (and those that were) after the others are done.
    """
    limit = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
    if limit < timedelta(0):
        raise InvalidInput("older_than must not be negative")
    cutoff = (now or datetime.now(UTC)) - limit
    found = await provider.list_labeled({**(labels or {}), LABEL: "1"})
    doomed = sorted(sid for sid, created in found if created is not None and _aware(created) <= cutoff)
    if dry_run:
        return doomed
    destroyed: list[str] = []
    failed: dict[str, str] = {}
    for sandbox_id in doomed:
        try:
            await provider.destroy_id(sandbox_id)
        except OpenmaError as exc:
            failed[sandbox_id] = f"[{exc.code}] {exc.message}"
        else:
            destroyed.append(sandbox_id)
    if failed:
        raise SandboxError(
            f"could not destroy {len(failed)} of {len(doomed)} leaked sandboxes: "
            + "; ".join(f"{k}: {v}" for k, v in failed.items()),
            destroyed=destroyed,
            failed=failed,
        )
    return destroyed


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
