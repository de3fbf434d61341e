"""The test data and helpers of :mod:`openma.testing.blobs`: bad and good keys, payloads, paging.

Importable from :mod:`openma.testing.blobs` as before; split out so each module stays small.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import anyio

from openma.ports.blobs import BlobStore

SHORT_TTL = 0.05
MIB = 1 << 20

BAD_KEYS: list[Any] = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../../b",
    "a/./b",
    "./a",
    "a/.",
    "a/..",
    "a//b",
    "a/",
    "back\\slash",
    "..\\windows",
    "ctl\x01char",
    "nul\x00byte",
    "new\nline",
    "del\x7f",
    "c1\x9f",
    ".openma/meta/x",
    "x" * 513,
    "d/" + "s" * 256,
    "\ud800",
    5,
    None,
    b"bytes-key",
]

GOOD_KEYS = [
    "日本語/ファイル.txt",
    "emoji/😀.bin",
    "spaces in a name",
    "percent%20and+plus",
    "colon:semi;comma,",
    "quote'\"`",
    "ends-with-dot.",
    "..leading-dots",
    "...",
    ".openma-not-reserved/x",
    "x" * 255,
    "/".join(["seg"] * 100),
]


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes (so a misplaced range cannot pass by luck)."""
    block = hashlib.sha256(f"openma-{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        if i % (size * 4) == 0:
            yield b""  # empty chunks are allowed and ignored
    await anyio.lowlevel.checkpoint()


async def lapse() -> None:
    await anyio.sleep(SHORT_TTL * 3)


async def all_keys(store: BlobStore, prefix: str = "", limit: int = 100) -> list[str]:
    keys: list[str] = []
    cursor = None
    while True:
        page = await store.list(prefix, cursor=cursor, limit=limit)
        keys += [i.key for i in page]
        cursor = page.next_cursor
        if cursor is None:
            return keys
