"""Where a platform's root secret comes from: ``OPENMA_ROOT_SECRET``, or the embedded default's key file.

* ``root_secret`` set: it is the current key, ``root_secret_previous`` the retired ones.
* Unset, and the stores holding secrets (:data:`SECRET_STORES`: vaults, and sessions with their secrets)
  are on the embedded "cf" backend (one host, one SQLite file): a root secret is
  generated once into ``root_secret.key`` next to the SQLite file, created with mode 0600 and read back on
  later starts. Back it up with the database: without it the stored secrets cannot be read.
* Unset, and one of them is on any other backend (several hosts may share it, and a key generated on
  one of them would not be known to the others): there is no key ring, and opening a store that holds
  secrets is a ``ConfigError`` that names ``OPENMA_ROOT_SECRET``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final

from openma.core.secrets import KeyRing
from openma.errors import ConfigError
from openma.settings import Settings

KEY_FILE: Final = "root_secret.key"
#: The stores that hold sealed secrets.
SECRET_STORES: Final = ("vaults", "sessions")


def key_file_path(settings: Settings) -> Path:
    """The generated key file of the embedded default: ``root_secret.key`` beside the SQLite file."""
    return Path(settings.sqlite_path).expanduser().parent / KEY_FILE


def _read_or_create(path: Path) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text("utf-8").strip()
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        return path.read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the root secret key file {str(path)!r} ({type(exc).__name__}); "
            "set OPENMA_ROOT_SECRET instead",
            field="root_secret",
        ) from None


def key_file_applies(settings: Settings) -> bool:
    """Whether, with no root secret set, the generated key file may seal the secrets: only when every store
    holding them is on the embedded ``cf`` backend (one host); a shared backend needs the same keys on every
    host, so ``OPENMA_ROOT_SECRET``."""
    return all(settings.backend_for(store) == "cf" for store in SECRET_STORES)


def load_key_ring(settings: Settings) -> KeyRing | None:
    """The platform's key ring (see the module), or ``None`` when no root secret is configured."""
    if settings.root_secret is not None:
        return KeyRing(settings.root_secret, settings.root_secret_previous)
    if not key_file_applies(settings):
        return None
    return KeyRing(_read_or_create(key_file_path(settings)), settings.root_secret_previous)


def missing_root_secret(settings: Settings) -> ConfigError:
    """The error of a platform that opens a store holding secrets without a root secret."""
    placed = ", ".join(f"{store} on {settings.backend_for(store)!r}" for store in SECRET_STORES)
    return ConfigError(
        f"stores holding secrets ({placed}) need a root secret and none is set; set OPENMA_ROOT_SECRET "
        "(at least 16 characters) so every host derives the same keys",
        field="root_secret",
    )


__all__ = ["KEY_FILE", "SECRET_STORES", "key_file_applies", "key_file_path", "load_key_ring", "missing_root_secret"]
