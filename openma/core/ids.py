"""Prefixed, time-sortable ids.

An id is ``<prefix>_<26 chars>``: 48 bits of Unix milliseconds then 80 random bits, in Crockford base32
(the ULID layout), so ids sort by creation time as strings and carry no coordination. Within one process
and one millisecond the random part is incremented, so ids minted by one process are strictly increasing.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from typing import Final

from openma.errors import InvalidInput

_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"
_RANDOM_BITS: Final = 80
# Two digits for every 10-bit value: the 26 digits of a body are 13 lookups (about a third of the time of
# base64.b32encode, which is pure Python, and its translation).
_PAIRS: Final = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_PAIR_SHIFTS: Final = tuple(range(120, -1, -10))

#: Known prefixes, by the kind of thing they name.
PREFIXES: Final[dict[str, str]] = {
    "tenant": "tnt",
    "agent": "agt",
    "environment": "env",
    "session": "ses",
    "event": "evt",
    "vault": "vlt",
    "credential": "crd",
    "memory_store": "mst",
    "memory": "mem",
    "file": "fil",
    "stream": "stm",
}

_ID_RE: Final = re.compile(r"([a-z]{2,8})_([0-9a-hjkmnp-tv-z]{26})")

_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


def _body(value: int) -> str:
    """The 26 base32 digits (Crockford's alphabet) of ``0 <= value < 2**130``, most significant first."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def new_id(prefix: str, *, now_ms: int | None = None) -> str:
    """Mint a new id with ``prefix`` (for example ``"agt"``)."""
    global _last_ms, _last_rand
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        if ms == _last_ms:
            rand = (_last_rand + 1) & ((1 << _RANDOM_BITS) - 1)
            _last_rand = rand
        else:
            rand = int.from_bytes(os.urandom(10), "big")
            if ms > _last_ms:
                _last_ms, _last_rand = ms, rand
    # The 130 bits of the body: two leading zeros, 48 of time, 80 random.
    return f"{prefix}_{_body((ms << _RANDOM_BITS) | rand)}"


def check_id(value: object, prefix: str, *, what: str = "id") -> str:
    """Return ``value`` if it is a well-formed id with ``prefix``, else raise :class:`InvalidInput`."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {type(value).__name__}", field=what)
    m = _ID_RE.fullmatch(value)
    if m is None or m.group(1) != prefix:
        shown = value if len(value) <= 64 else value[:61] + "..."
        raise InvalidInput(f"{what} {shown!r} is not a valid {prefix}_ id", field=what)
    return value


def id_time_ms(value: str) -> int:
    """The creation time (Unix ms) encoded in an id."""
    body = value.split("_", 1)[1][:10]
    ms = 0
    for ch in body:
        ms = (ms << 5) | _ALPHABET.index(ch)
    return ms


def derived_id(prefix: str, *parts: str) -> str:
    """A deterministic id for ``parts``: the same inputs always give the same id.

    Used where a retried write must collide with its first attempt (recovery events), so the log's
    event-id de-duplication turns the retry into a no-op. It has the id format but not the time order.
    """
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=17).digest()
    return f"{prefix}_{_body(int.from_bytes(digest, 'big') >> 6)}"
