"""Encryption at rest of the secrets openma keeps (vault credentials, session secrets).

AES-256-GCM from the ``cryptography`` package, with one key per *purpose* derived from the root secret by
HKDF-SHA256, so a key never serves two kinds of data. A sealed value is text::

    v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>

* ``v1`` is the format version: a later format can be told apart and read next to this one.
* The key id is a fingerprint of the root secret (HKDF of it, 8 bytes in hex): it says which root secret
  sealed the value, so a rotation needs no downtime (``OPENMA_ROOT_SECRET_PREVIOUS`` keeps old ones
  readable) and an unknown key id is a clear :class:`~openma.errors.SecretUnreadable`.
* The associated data binds the ciphertext to where it is stored (format, key id, purpose, tenant, table,
  row and field): a value copied to another row, field or tenant does not decrypt.

Errors never hold a secret: they name the key id and the place, nothing else.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from openma.errors import ConfigError, SecretUnreadable
from openma.models import Place

FORMAT: Final = "v1"
#: Shortest root secret accepted (characters); a generated one is 43.
MIN_ROOT_SECRET: Final = 16
_NONCE: Final = 12
_SALT: Final = b"openma/root-secret/v1"


def _aad(where: Place, key_id: str, purpose: str) -> bytes:
    """The associated data: the format, the key, the purpose and the place a value is bound to."""
    parts = (FORMAT, key_id, purpose, where.tenant_id, where.table, where.row_id, where.field)
    return "\x1f".join(parts).encode("utf-8")


def _derive(root: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info).derive(root)


def key_id_of(token: str) -> str:
    """The key id a sealed value names (``"?"`` when it is not a sealed value at all)."""
    parts = token.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == FORMAT else "?"


class KeyRing:
    """The current root secret and the retired ones that still decrypt.

    ``current`` seals; ``current`` and every ``previous`` open. A root secret shorter than
    :data:`MIN_ROOT_SECRET` characters, or a ring where two secrets share a key id, is a ``ConfigError``.
    """

    def __init__(self, current: str, previous: Iterable[str] = ()) -> None:
        roots = [current, *[p for p in previous if p and p != current]]
        for index, root in enumerate(roots):
            if not isinstance(root, str) or len(root) < MIN_ROOT_SECRET:
                which = "OPENMA_ROOT_SECRET" if index == 0 else f"OPENMA_ROOT_SECRET_PREVIOUS[{index - 1}]"
                raise ConfigError(
                    f"{which} must be a string of at least {MIN_ROOT_SECRET} characters "
                    "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                    field="root_secret" if index == 0 else "root_secret_previous",
                )
        self._roots: dict[str, bytes] = {}
        for root in roots:
            raw = root.encode("utf-8")
            self._roots.setdefault(_derive(raw, b"openma/key-id", 8).hex(), raw)
        self.key_id = next(iter(self._roots))
        self._aead: dict[tuple[str, str], AESGCM] = {}

    def __repr__(self) -> str:
        return f"KeyRing(key_id={self.key_id!r}, previous={len(self._roots) - 1})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this ring opens, the current one first."""
        return tuple(self._roots)

    def _cipher(self, key_id: str, purpose: str, where: Place) -> AESGCM:
        cipher = self._aead.get((key_id, purpose))
        if cipher is None:
            root = self._roots.get(key_id)
            if root is None:
                raise SecretUnreadable(
                    f"{where.table}.{where.field} of {where.row_id} was sealed with key id {key_id}, which is "
                    "neither OPENMA_ROOT_SECRET nor in OPENMA_ROOT_SECRET_PREVIOUS",
                    key_id=key_id,
                    table=where.table,
                    row_id=where.row_id,
                    field=where.field,
                )
            cipher = AESGCM(_derive(root, b"openma/aes-256-gcm/" + purpose.encode(), 32))
            self._aead[(key_id, purpose)] = cipher
        return cipher

    def seal(self, plaintext: bytes, purpose: str, where: Place) -> str:
        """``plaintext`` encrypted under the current key, bound to ``purpose`` and ``where``."""
        nonce = os.urandom(_NONCE)
        body = self._cipher(self.key_id, purpose, where).encrypt(nonce, plaintext, _aad(where, self.key_id, purpose))
        return f"{FORMAT}.{self.key_id}.{base64.urlsafe_b64encode(nonce + body).decode('ascii')}"

    def open(self, token: str, purpose: str, where: Place) -> bytes:
        """The plaintext of ``token``; ``SecretUnreadable`` (naming the key id) if it cannot be read here."""
        key_id = key_id_of(token)
        if key_id == "?":
            raise self._unreadable(key_id, where, "is not a sealed value of a known format")
        cipher = self._cipher(key_id, purpose, where)
        try:
            raw = base64.urlsafe_b64decode(token.split(".", 2)[2].encode("ascii"))
            return cipher.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(where, key_id, purpose))
        except (InvalidTag, ValueError, binascii.Error, UnicodeEncodeError):
            raise self._unreadable(key_id, where, "does not authenticate (altered, or copied from elsewhere)") from None

    def reseal(self, token: str, purpose: str, where: Place) -> str | None:
        """``token`` sealed again under the current key, or ``None`` when it already is (rotation)."""
        if key_id_of(token) == self.key_id:
            return None
        return self.seal(self.open(token, purpose, where), purpose, where)

    def mac_keys(self, purpose: str) -> list[bytes]:
        """HMAC keys for ``purpose`` (HKDF of each root secret), the current one first: sign with the first,
        accept any (a rotation keeps what the previous secret signed valid)."""
        return [_derive(root, b"openma/hmac-sha256/" + purpose.encode(), 32) for root in self._roots.values()]

    @staticmethod
    def _unreadable(key_id: str, where: Place, why: str) -> SecretUnreadable:
        return SecretUnreadable(
            f"{where.table}.{where.field} of {where.row_id} (key id {key_id}) {why}",
            key_id=key_id,
            table=where.table,
            row_id=where.row_id,
            field=where.field,
        )


__all__ = ["FORMAT", "MIN_ROOT_SECRET", "KeyRing", "Place", "key_id_of"]
