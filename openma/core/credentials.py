"""The ``auth`` of a vault credential: its two types, which fields are secret, and the redacted view.

``static_bearer``: ``token`` (secret), ``hosts`` (the hosts it is sent to), optional ``header`` (default
``Authorization: Bearer {token}``). ``mcp_oauth``: ``mcp_server_url`` (immutable), ``access_token``,
``refresh_token``, ``client_secret`` (secret), ``token_endpoint``, ``client_id``, ``expires_at``.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from openma.core import validate
from openma.errors import InvalidInput

AUTH_TYPES: Final = ("static_bearer", "mcp_oauth")
#: The secret fields of each type: never returned by ``get``/``list``, stored only sealed.
SECRET_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "static_bearer": ("token",),
    "mcp_oauth": ("access_token", "refresh_token", "client_secret"),
}
_PUBLIC_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "static_bearer": ("hosts", "header"),
    "mcp_oauth": ("mcp_server_url", "token_endpoint", "client_id", "expires_at"),
}
_REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    "static_bearer": ("token", "hosts"),
    "mcp_oauth": ("mcp_server_url", "access_token"),
}
MAX_SECRET: Final = 16_384
MAX_HOSTS: Final = 64
#: A token shorter than this shows no characters in its preview.
PREVIEW_MIN_LEN: Final = 12


def _url(value: object, what: str) -> str:
    url = validate.text(value, what, max_len=2048, min_len=1)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"{what} must be an http(s) URL", field=what)
    return url


def _host(value: object) -> str:
    host = validate.text(value, "auth.hosts[]", max_len=253, min_len=1).strip().lower()
    if not host or any(c in host for c in "/ @:?#"):
        raise InvalidInput("auth.hosts items must be host names such as api.github.com", field="auth.hosts")
    return host


def check_auth(value: object) -> dict[str, Any]:
    """A checked copy of ``auth`` (``InvalidInput`` naming the field otherwise); unknown fields are refused."""
    if not isinstance(value, dict):
        raise InvalidInput("auth must be an object with a type", field="auth")
    kind = value.get("type")
    if kind not in AUTH_TYPES:
        raise InvalidInput(f"auth.type must be one of {', '.join(AUTH_TYPES)}", field="auth.type")
    allowed = {"type", *SECRET_FIELDS[kind], *_PUBLIC_FIELDS[kind]}
    for key in value:
        if key not in allowed:
            raise InvalidInput(
                f"auth of type {kind} has unknown field {key!r}; fields: {', '.join(sorted(allowed))}",
                field=f"auth.{key}" if isinstance(key, str) else "auth",
            )
    for key in _REQUIRED[kind]:
        if value.get(key) is None:
            raise InvalidInput(f"auth of type {kind} needs {key}", field=f"auth.{key}")
    out: dict[str, Any] = {"type": kind}
    for key in SECRET_FIELDS[kind]:
        if value.get(key) is not None:
            out[key] = validate.text(value[key], f"auth.{key}", max_len=MAX_SECRET, min_len=1)
    if kind == "static_bearer":
        hosts = value["hosts"]
        if not isinstance(hosts, list) or not hosts or len(hosts) > MAX_HOSTS:
            raise InvalidInput(f"auth.hosts must be a list of 1 to {MAX_HOSTS} host names", field="auth.hosts")
        out["hosts"] = [_host(h) for h in hosts]
        if value.get("header") is not None:
            out["header"] = validate.text(value["header"], "auth.header", max_len=256, min_len=1)
    else:
        out["mcp_server_url"] = _url(value["mcp_server_url"], "auth.mcp_server_url")
        if value.get("token_endpoint") is not None:
            out["token_endpoint"] = _url(value["token_endpoint"], "auth.token_endpoint")
        if value.get("client_id") is not None:
            out["client_id"] = validate.text(value["client_id"], "auth.client_id", max_len=1024, min_len=1)
        if value.get("expires_at") is not None:
            out["expires_at"] = validate.integer(value["expires_at"], "auth.expires_at")
    return out


def public_part(auth: dict[str, Any]) -> dict[str, Any]:
    """``auth`` with every secret field set to ``None`` (what ``get``/``list`` return)."""
    secret = SECRET_FIELDS[auth["type"]]
    return {**{k: v for k, v in auth.items() if k not in secret}, **dict.fromkeys(secret)}


def preview(auth: dict[str, Any]) -> str:
    """``"…"`` and the last 4 characters of the main token (only ``"…"`` for a short one)."""
    token = auth.get("token") or auth.get("access_token") or ""
    return "…" + token[-4:] if len(token) >= PREVIEW_MIN_LEN else "…"


__all__ = ["AUTH_TYPES", "SECRET_FIELDS", "check_auth", "preview", "public_part"]
