"""``python -m openma doctor``: check every configured part without creating anything.

Each store backend, the blob store, the sandbox provider and the default model is checked in turn, and every
problem is reported (one failing part does not hide the next). Checking a part imports its driver
(``psycopg``, ``s3fs``, the ``e2b``, ``daytona``, ``anthropic`` or ``openai`` SDK), so a missing extra is found
here rather than at the first call. No model is called and no key is printed.
Nothing is created: a SQLite file or a blob directory that does not exist yet is reported as such, with
whether it could be created, and no migration is applied.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from openma import registry
from openma.errors import OpenmaError
from openma.settings import STORE_NAMES, Settings, redact_secrets


@attrs.frozen
class Check:
    """The outcome of checking one part: ``part`` (``"backend cf"``, ``"blobs"``, ``"sandbox local"``)."""

    part: str
    ok: bool
    detail: str


def _failure(part: str, exc: BaseException) -> Check:
    if isinstance(exc, OpenmaError):
        return Check(part, False, f"[{exc.code}] {exc.message}")
    return Check(part, False, f"{type(exc).__name__}: {exc}")


def _place(path_text: str, what: str, *, directory: bool) -> tuple[bool, str, bool]:
    """``(usable, detail, exists)`` for ``path_text`` as ``what`` (created later if missing); creates nothing."""
    path = Path(path_text).expanduser()
    if path.exists():
        if directory and not path.is_dir():
            return False, f"{path} is not a directory", True
        if not os.access(path if directory else path.parent, os.W_OK | os.X_OK):
            return False, f"{path} is not writable", True
        return True, f"{what} {path}", True
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return False, f"{path} does not exist and cannot be created ({parent} is not a writable directory)", False
    return True, f"{path} does not exist yet; it is created on first use", False


async def diagnose(settings: Settings) -> list[Check]:
    """Check every store backend, the blob store, the sandbox provider and the default model of ``settings``."""
    checks = [await _backend(settings, name) for name in sorted({settings.backend_for(s) for s in STORE_NAMES})]
    checks.append(await _blobs(settings))
    checks.append(await _sandbox(settings))
    checks.append(await _model(settings))
    checks.append(_secrets(settings))
    checks.append(_egress(settings))
    return checks


def _secrets(settings: Settings) -> Check:
    """Whether the stores holding secrets can seal them: a root secret, or the embedded default's key file."""
    from openma.keyfile import key_file_applies, key_file_path, missing_root_secret

    if settings.root_secret is not None:
        return Check("secrets", True, "sealed under OPENMA_ROOT_SECRET (never printed)")
    if not key_file_applies(settings):
        return Check("secrets", False, missing_root_secret(settings).message)
    return Check("secrets", True, f"sealed under the generated key file {key_file_path(settings)}")


def _egress(settings: Settings) -> Check:
    """The egress proxy: its module, its CA (derived from the root secret), its listen address, and the
    upstream CA file. Binds the listen address for a moment; creates nothing."""
    import importlib.util
    import socket

    from openma.core.egress.service import derive_ca
    from openma.keyfile import key_file_path, load_key_ring

    if settings.egress_mode == "off":
        return Check("egress", True, "OFF: sandboxes reach the network directly, with no allowlist (OPENMA_EGRESS)")
    try:
        if importlib.util.find_spec("openma.adapters.egress") is None:
            return Check("egress", False, "the egress proxy module openma.adapters.egress is missing")
        if settings.root_secret is None and not key_file_path(settings).exists():
            ca = "the CA is derived from the root secret once the key file exists"
        else:
            ring = load_key_ring(settings)
            ca = f"CA derived from key id {ring.key_id}" if ring is not None else "no root secret: no CA"
            if ring is None:
                return Check("egress", False, "no root secret to derive the egress CA from: set OPENMA_ROOT_SECRET")
            derive_ca(ring)
        host, port = settings.egress_listen_host, settings.egress_listen_port
        with socket.create_server((host, port)) as server:
            where = f"{host}:{server.getsockname()[1] if port == 0 else port}"
        upstream = settings.egress_upstream_ca
        extra = ""
        if upstream is not None:
            from cryptography import x509

            certs = x509.load_pem_x509_certificates(Path(upstream).expanduser().read_bytes())
            extra = f"; upstream CA file {upstream} ({len(certs)} certificate(s))"
    except Exception as exc:
        return _failure("egress", exc)
    return Check("egress", True, f"proxy can listen on {where}; {ca}{extra}")


async def _backend(settings: Settings, name: str) -> Check:
    from openma.adapters.sql import migrate as migrations

    part = f"backend {name}"
    try:
        factory = registry.store_backends.check(name)
    except OpenmaError as exc:
        return _failure(part, exc)
    if name == "cf":
        ok, detail, exists = _place(settings.sqlite_path, "database", directory=False)
        if not ok or not exists:  # opening would create it: report instead
            return Check(part, ok, detail)
    try:
        backend: Any = await factory(settings)
    except Exception as exc:
        return _failure(part, exc)
    try:
        client = getattr(backend, "client", None)
        if client is None:
            return Check(part, True, "opened")
        waiting = [s.name for s in await migrations.status(client) if not s.applied]
        state = f"pending migrations: {', '.join(waiting)}" if waiting else "schema up to date"
        return Check(part, True, f"{client!r}; {state}")
    except Exception as exc:
        return _failure(part, exc)
    finally:
        try:
            await backend.aclose()
        except Exception:  # pragma: no cover - the check's outcome is what matters here
            pass


async def _blobs(settings: Settings) -> Check:
    from openma.adapters.fsspec_blobs import FsspecBlobStore, open_blob_store, storage_options

    url = settings.blob_url
    part = f"blobs {url}"
    protocol = url.split("://", 1)[0].lower()
    try:
        factory = registry.blob_stores.load(registry.blob_store_name(url))
    except Exception as exc:
        return _failure(part, exc)
    if factory is not open_blob_store:  # a third-party store: its factory loads; opening it could create things
        return Check(part, True, f"blob store {factory.__module__}.{factory.__qualname__} (not opened)")
    options = storage_options(settings)
    if protocol in ("file", "local"):
        if options:
            return Check(part, False, f"file:// blob stores take no options, got {sorted(options)}")
        ok, detail, _ = _place(url.split("://", 1)[1] or ".", "directory", directory=True)
        return Check(part, ok, detail)
    try:
        import fsspec

        fs_class = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        hint = "; install it with: pip install 'openma[s3]'" if protocol in ("s3", "s3a") else ""
        return Check(part, False, f"the driver of {protocol}:// cannot be imported ({exc}){hint}")
    except ValueError as exc:
        return Check(part, False, f"fsspec does not know {protocol}:// ({exc})")
    driver = f"{fs_class.__module__}.{fs_class.__qualname__}"
    if protocol not in ("s3", "s3a"):
        return Check(part, True, f"driver {driver} (not opened: opening creates the store's directories)")
    try:  # an S3 store opens with a HEAD of its bucket and writes nothing
        store = await FsspecBlobStore.from_settings(settings)
    except Exception as exc:
        return _failure(part, exc)
    await store.aclose()
    return Check(part, True, f"driver {driver}; bucket reachable")


async def _sandbox(settings: Settings) -> Check:
    name = settings.sandbox
    part = f"sandbox {name}"
    if name == "bubblewrap":
        return _bubblewrap(settings, part)
    try:
        factory = registry.sandboxes.check(name)
        provider = await factory(settings, blobs=None)
    except Exception as exc:
        return _failure(part, exc)
    try:
        await provider.aclose()
    except Exception as exc:
        return _failure(part, exc)
    if name == "local":
        ok, detail, _ = _place(settings.local_sandbox_root, "root", directory=True)
        return Check(part, ok, detail)
    return Check(part, True, "provider opens (SDK imported, credentials set)")


def _bubblewrap(settings: Settings, part: str) -> Check:
    """Whether the bubblewrap sandbox can run here (bwrap present, user namespaces allowed, the unprivileged
    uid usable: a trial sandbox runs), and why not."""
    from openma.adapters.sandboxes.bubblewrap import host_problem, jail_from_settings

    jail = jail_from_settings(settings)
    problem = host_problem(jail)
    if problem is not None:
        return Check(part, False, problem)
    ok, detail, _ = _place(settings.local_sandbox_root, "root", directory=True)
    return Check(part, ok, f"bwrap runs as uid {jail.uid}; {detail}" if ok else detail)


#: The variable holding each built-in model adapter's key (named in the report; the key itself never is).
_MODEL_KEYS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


async def _model(settings: Settings) -> Check:
    """The default model (``OPENMA_MODEL``): its adapter imports and opens (its key is set). No call is made."""
    from openma.adapters.models import open_model, resolve_model

    if settings.model is None:
        return Check("model", True, "no default model (OPENMA_MODEL unset); each agent's model names its own")
    part = f"model {settings.model}"
    try:
        spec = resolve_model(settings)
        part = f"model {spec}"
        registry.models.check(spec.provider)
        model = await open_model(settings)
    except Exception as exc:
        return _failure(part, exc)
    try:
        await model.aclose()
    except Exception as exc:
        return _failure(part, exc)
    if spec.provider == "openai" and not settings.openai_api_key:
        server = redact_secrets(settings.openai_base_url or "", settings.openai_base_url)
        return Check(part, True, f"adapter openai imported; no key, server {server}")
    key = _MODEL_KEYS.get(spec.provider)
    return Check(part, True, f"adapter {spec.provider} imported; {key} set" if key else "adapter opens")
