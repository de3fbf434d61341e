"""How a configuration field is declared (:func:`setting`) and how the docs table is rendered from it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from openma._validators import Validator, integer_in
from openma.errors import ConfigError
from openma.redact import redact_secrets

#: Longest duration setting, in seconds (one day): a longer timeout or poll interval is a typo.
MAX_SECONDS: Final = 86_400.0
INT32: Final = 2**31 - 1
#: Largest byte count (rlimits and sizes must fit a signed 64-bit integer, with room to double).
MAX_BYTES: Final = 2**62


def _hide(value: object) -> str:
    return "'***'" if value else repr(value)


def _mask(value: object) -> str:
    return repr(redact_secrets(value, value) if isinstance(value, str) else value)


def setting(
    name: str,
    env: str,
    doc: str,
    *,
    default: Any = attrs.NOTHING,
    factory: Callable[[], Any] | None = None,
    validator: Validator | None = None,
    converter: Callable[[Any], Any] | None = None,
    kind: str = "str",
    shown: str | None = None,
    secret: bool = False,
) -> Any:
    """An ``attrs`` field whose metadata names its setting, its variable and its docs line (see the module)."""
    metadata = {"setting": name, "env": env, "kind": kind, "doc": doc, "shown": shown, "secret": secret}
    repr_: Callable[[Any], str] = _hide if secret else _mask
    if factory is not None:
        default = attrs.Factory(factory)
    return attrs.field(default=default, validator=validator, converter=converter, repr=repr_, metadata=metadata)


def secret_list(value: object) -> tuple[str, ...]:
    """``root_secret_previous``: a comma-separated string (or a list of strings) as a tuple, blanks dropped."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            "root_secret_previous must be a comma-separated string or a list of strings", field="root_secret_previous"
        )
    return tuple(v.strip() for v in value if v.strip())


#: The telemetry sinks ``OPENMA_TELEMETRY`` may name.
TELEMETRY_SINKS: Final = ("log", "sql", "otel", "none")


def telemetry_sinks(value: object) -> tuple[str, ...]:
    """``OPENMA_TELEMETRY``: a comma-separated string (or a list) of sink names, blanks and repeats dropped."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            "telemetry_sinks must be a comma-separated string or a list of sink names", field="telemetry_sinks"
        )
    names = tuple(dict.fromkeys(v.strip().lower() for v in value if v.strip()))
    unknown = [n for n in names if n not in TELEMETRY_SINKS]
    if unknown:
        raise ConfigError(
            f"unknown telemetry sink {unknown[0]!r}; valid sinks: {', '.join(TELEMETRY_SINKS)}",
            field="telemetry_sinks",
            choices=list(TELEMETRY_SINKS),
        )
    if "none" in names and len(names) > 1:
        raise ConfigError("telemetry sink 'none' cannot be combined with others", field="telemetry_sinks")
    return names or ("none",)


def optional_int(lo: int, hi: int) -> Validator:
    return attrs.validators.optional(integer_in(lo, hi))


def default_of(field: attrs.Attribute[Any]) -> Any:
    """The default value of ``field`` (a factory's fresh value)."""
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory()
    return default


def _shown_default(field: attrs.Attribute[Any]) -> str:
    if field.metadata.get("shown"):
        return str(field.metadata["shown"])
    default = default_of(field)
    if default is None:
        return "unset"
    if isinstance(default, bool):
        text = str(default).lower()
    elif isinstance(default, float):
        text = f"{default:g}"
    elif isinstance(default, tuple):
        text = ",".join(default)
    elif isinstance(default, dict):
        text = json.dumps(default, separators=(",", ":"))
    else:
        text = str(default)
    return f"`{text}`"


def markdown_table(fields: Iterable[attrs.Attribute[Any]]) -> str:
    """The docs table (setting, variable, default, meaning) of ``fields``, declared with :func:`setting`."""
    rows = ["| Setting | Variable | Default | Meaning |", "|---|---|---|---|"]
    for f in fields:
        meta = f.metadata
        rows.append(f"| `{meta['setting']}` | `{meta['env']}` | {_shown_default(f)} | {meta['doc']} |")
    return "\n".join(rows)


_MARKER: Final = re.compile(r"(<!-- settings: (?P<part>\w+) -->\n)(?:\|[^\n]*\n)*")


def render_docs(text: str) -> str:
    """``text`` with the table after each ``<!-- settings: PART -->`` marker regenerated from the metadata.

    ``PART`` is a key of :data:`PARTS`, or ``core`` for the fields of ``Settings`` itself. Run
    ``python -m openma.config docs/configuration.md`` to rewrite the file in place.
    """
    from openma.config import PARTS
    from openma.settings import Settings  # settings imports this package

    def table(match: re.Match[str]) -> str:
        part = match.group("part")
        cls = Settings if part == "core" else PARTS.get(part)
        if cls is None:
            raise ConfigError(f"unknown settings table {part!r}; valid: core, {', '.join(PARTS)}")
        fields = [f for f in attrs.fields(cls) if "env" in f.metadata]
        return match.group(1) + markdown_table(fields) + "\n"

    return _MARKER.sub(table, text)
