"""Masking connection secrets (URLs and DSNs) in messages, log lines and reprs."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, unquote

#: Connection parameters whose values are secrets (or say where one is kept), in a URL query or a DSN.
_SECRET_KEYS: Final = ("password", "sslpassword", "passfile")
_KEYS: Final = "|".join(_SECRET_KEYS)
#: ``scheme://user:password@``: everything between the first ``:`` of the userinfo and its last ``@``.
_URL_USERINFO: Final = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s'\"]*:)(?P<secret>[^/?#\s'\"]*)(?=@)")
#: ``?password=...`` / ``&sslpassword=...`` in a URL query (the value ends at ``&``, ``#``, a quote or a space).
_URL_PARAM: Final = re.compile(rf"(?P<head>[?&](?:{_KEYS})=)(?P<secret>[^&#\s'\"]*)", re.I)
#: ``password = 'quoted \' value'`` or ``password=bare`` in a key=value DSN.
_DSN_PARAM: Final = re.compile(
    rf"(?P<head>(?<![\w?&])(?:{_KEYS})\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'?|[^\s'\"]*)", re.I
)
_SCHEME: Final = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
MASK: Final = "***"


def _secrets_in(conninfo: str) -> set[str]:
    """The secret values written in ``conninfo`` (a URL or a DSN): as written, percent-decoded, unquoted."""
    raws: list[str] = []
    scheme = _SCHEME.match(conninfo)
    if scheme:  # a whole URL: its userinfo ends at the last '@' before the path, whatever it holds
        rest = conninfo[scheme.end() :]
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        at = rest.rfind("@", 0, end)
        if at >= 0 and ":" in rest[:at]:
            raws.append(rest[:at].split(":", 1)[1])
    for pattern in (_URL_USERINFO, _URL_PARAM, _DSN_PARAM):
        for match in pattern.finditer(conninfo):
            raw = match.group("secret")
            if raw.startswith("'"):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1] if raw.endswith("'") and len(raw) > 1 else raw[1:])
            raws.append(raw)
    found: set[str] = set()
    for raw in raws:
        found.update({raw, unquote(raw), quote(raw, safe=""), *raw.split("@")})
    found.discard("")
    return found


def redact_secrets(text: str, *conninfos: str | None) -> str:
    """``text`` with every connection secret masked, for a message, a log line or a repr.

    Masks the password of any ``scheme://user:password@`` URL, the ``password``, ``sslpassword`` and
    ``passfile`` parameters of a URL query or a key=value DSN, and every secret value written in
    ``conninfos`` wherever it appears (a driver's error message may quote a token of the URL it could not
    parse, out of context). Use it on every message built from a driver error.
    """
    secrets = set().union(*(_secrets_in(c) for c in conninfos if c))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern in (_URL_USERINFO, _URL_PARAM, _DSN_PARAM):
        text = pattern.sub(lambda m: f"{m.group('head')}{MASK}" if m.group("secret") else m.group(0), text)
    return text


def mask_url(url: str | None) -> str | None:
    """``url`` with its secrets masked (see :func:`redact_secrets`)."""
    if not url:
        return url
    return redact_secrets(url, url)
