"""The Sealer port: what a store holding secrets needs to seal and open them.

``seal`` encrypts ``plaintext`` for one ``purpose`` (``"credentials"``, ``"session_secrets"``) and binds the
ciphertext to its :class:`~openma.models.Place`; ``open`` reverses it, and raises
:class:`~openma.errors.SecretUnreadable` (naming the key id, never a secret) for a ciphertext of another
place, a tampered one, or one sealed under a key it does not hold. openma's implementation is
:class:`openma.core.secrets.KeyRing`.
"""

from __future__ import annotations

from typing import Protocol

from openma.models import Place


class Sealer(Protocol):
    def seal(self, plaintext: bytes, purpose: str, where: Place) -> str:
        """The ciphertext of ``plaintext`` (a format version and a key id included), bound to ``where``."""
        ...

    def open(self, token: str, purpose: str, where: Place) -> bytes:
        """The plaintext sealed in ``token`` for ``purpose`` at ``where``."""
        ...
