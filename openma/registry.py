"""Find pluggable parts by name: built-ins, runtime registrations, then entry points.

Like fsspec's ``known_implementations``: a name maps to an import path that is resolved only when the part
is first used, so an extra that is not installed costs nothing until it is chosen, and then fails with a
:class:`~openma.errors.ConfigError` that says which extra to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Final

import attrs

from openma.errors import ConfigError


@attrs.frozen
class _Builtin:
    target: str
    extra: str | None = None
    #: Top-level modules the extra installs: only their absence means "install the extra".
    needs: tuple[str, ...] = ()


class Registry:
    """Names → factories for one kind of part (store backends, sandboxes, blob stores, ...)."""

    def __init__(self, kind: str, group: str, builtins: dict[str, _Builtin]) -> None:
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins)
        self._registered: dict[str, Callable[..., Any] | str] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()!r})"

    def register(self, name: str, factory: Callable[..., Any] | str, *, replace: bool = False) -> None:
        """Register ``factory`` (a callable or a ``"module:attr"`` path) under ``name``."""
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{self.kind} name {name!r} must be alphanumeric (with - or _)")
        if not callable(factory) and not (isinstance(factory, str) and ":" in factory):
            raise ConfigError(f"{self.kind} {name!r}: the factory must be a callable or a 'module:attr' string")
        if not replace and name in self.names():
            raise ConfigError(f"{self.kind} {name!r} is already registered; pass replace=True")
        self._registered[name] = factory

    def unregister(self, name: str) -> None:
        self._registered.pop(name, None)

    def _entry_points(self) -> dict[str, str]:
        return {ep.name: ep.value for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every name that can be chosen, without importing anything."""
        return sorted({*self._builtins, *self._registered, *self._entry_points()})

    def has(self, name: object) -> bool:
        """Whether ``name`` can be chosen; entry points are only scanned for a name that is not built in."""
        if not isinstance(name, str):
            return False
        return name in self._builtins or name in self._registered or name in self._entry_points()

    def load(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``, imported now."""
        given: object = name
        if not isinstance(given, str):
            raise ConfigError(f"a {self.kind} name must be a string, got {type(given).__name__}")
        needs: tuple[str, ...] = ()
        if name in self._registered:
            target: Callable[..., Any] | str = self._registered[name]
            extra = None
        elif name in self._builtins:
            builtin = self._builtins[name]
            target, extra, needs = builtin.target, builtin.extra, builtin.needs
        else:
            eps = self._entry_points()
            if name not in eps:
                raise ConfigError(
                    f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}",
                    name=name,
                    choices=self.names(),
                )
            target, extra = eps[name], None
        if callable(target):
            return target
        return _import(target, kind=self.kind, name=name, extra=extra, needs=needs)

    def check(self, name: str) -> Callable[..., Any]:
        """Like :meth:`load`, and also import the driver modules a built-in needs (which its factory imports
        only when it opens), so a missing driver is found without opening anything."""
        factory = self.load(name)
        builtin = self._builtins.get(name) if name not in self._registered else None
        if builtin is None:
            return factory
        for module in builtin.needs:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                hint = f"; install it with: pip install 'openma[{builtin.extra}]'" if builtin.extra else ""
                raise ConfigError(
                    f"{self.kind} {name!r} needs {module}, which cannot be imported ({exc}){hint}",
                    name=name,
                    extra=builtin.extra,
                ) from exc
        return factory


def _import(path: str, *, kind: str, name: str, extra: str | None, needs: tuple[str, ...] = ()) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        hint = f"; install it with: pip install 'openma[{extra}]'" if extra and missing in needs else ""
        raise ConfigError(f"{kind} {name!r} cannot be loaded ({exc}){hint}", name=name, extra=extra) from exc
    try:
        factory: Callable[..., Any] = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{kind} {name!r}: {module_name} has no attribute {attr!r}") from None
    return factory


#: Store backends: ``factory(settings) -> Awaitable[StoreBackend]``.
store_backends: Final = Registry(
    "store backend",
    "openma.store_backends",
    {
        "cf": _Builtin("openma.adapters.sqlite_engine:open_store_backend"),
        "pg": _Builtin(
            "openma.adapters.postgres_engine:open_store_backend", extra="pg", needs=("psycopg", "psycopg_pool")
        ),
    },
)

#: Sandboxes: ``factory(settings, **options) -> Sandbox`` (filled in by the sandbox issues).
sandboxes: Final = Registry(
    "sandbox",
    "openma.sandboxes",
    {
        "local": _Builtin("openma.adapters.sandboxes.local:open_sandbox_provider"),
        "bubblewrap": _Builtin("openma.adapters.sandboxes.bubblewrap:open_sandbox_provider"),
        "e2b": _Builtin("openma.adapters.sandboxes.e2b:open_sandbox_provider", extra="e2b", needs=("e2b",)),
        "daytona": _Builtin(
            "openma.adapters.sandboxes.daytona:open_sandbox_provider", extra="daytona", needs=("daytona",)
        ),
    },
)

#: Blob stores, chosen by the scheme of ``settings.blob_url`` (``dict://...`` picks the store named ``dict``):
#: ``factory(settings) -> Awaitable[BlobStore]``. A factory only checks its settings (no I/O that creates
#: anything); if the store has ``async setup()``, the platform calls it once the store backends are open, and
#: ``async aclose()`` when it closes. A scheme no name claims goes to ``fsspec``, which takes any fsspec URL.
blob_stores: Final = Registry(
    "blob store",
    "openma.blob_stores",
    {
        "fsspec": _Builtin("openma.adapters.fsspec_blobs:open_blob_store"),
        "file": _Builtin("openma.adapters.fsspec_blobs:open_blob_store"),
        "local": _Builtin("openma.adapters.fsspec_blobs:open_blob_store"),
        "memory": _Builtin("openma.adapters.fsspec_blobs:open_blob_store"),
        "s3": _Builtin("openma.adapters.fsspec_blobs:open_blob_store", extra="s3", needs=("s3fs",)),
        "s3a": _Builtin("openma.adapters.fsspec_blobs:open_blob_store", extra="s3", needs=("s3fs",)),
    },
)
#: The blob store that takes every URL whose scheme has no store of its own.
DEFAULT_BLOB_STORE: Final = "fsspec"


def blob_store_name(url: object) -> str:
    """The name of the blob store for ``url``: its scheme if a store is registered under it, else ``fsspec``.

    A value that is not a ``scheme://...`` string is a :class:`ConfigError` naming ``blob_url``.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"blob_url must be a URL such as file://./.openma/blobs, got {url!r}", field="blob_url")
    scheme = url.split("://", 1)[0].lower()
    return scheme if blob_stores.has(scheme) else DEFAULT_BLOB_STORE


#: Model adapters: ``factory(settings, *, model: str) -> Model`` (or an awaitable of one), where ``model`` is
#: the provider's model id. Third parties register under the ``openma.models`` entry-point group.
models: Final = Registry(
    "model",
    "openma.models",
    {
        "anthropic": _Builtin("openma.adapters.models.anthropic:open_model", extra="anthropic", needs=("anthropic",)),
        "openai": _Builtin("openma.adapters.models.openai:open_model", extra="openai", needs=("openai",)),
    },
)
