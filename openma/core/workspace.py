"""Portable workspace snapshots and secret masking, over any :class:`~openma.ports.sandbox.Sandbox`.

Neither E2B nor Daytona can roll an existing sandbox back in place (their native snapshots make a *new*
sandbox), so every adapter snapshots the same way, through the port itself: ``tar -czf`` inside the sandbox,
the bytes out through ``read_file``, into the BlobStore with a TTL; and back: the tarball checked (its
sha256, then every member, in Python, before anything is extracted), written with ``write_file``, the
workspace emptied and the tarball extracted in place. Only ``exec``, ``read_file``, ``write_file`` and
``remove`` are used, with commands that GNU tar and BusyBox both understand.

The tarball is staged *inside* the workspace under a reserved name (``.openma-snapshot-*``), because the
workspace is the one place every adapter's file API can reach; tar excludes that name, and the file is
removed afterwards whatever happens (a removal that fails is reported as ``silent_catch`` to the optional
``telemetry``; tar never archives the reserved name, so a leftover never reaches a snapshot).
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import secrets as _secrets
import tarfile
from collections.abc import Iterable
from datetime import timedelta
from typing import Final

import anyio

from openma.errors import InvalidInput, NotFound, SandboxError, SandboxTimeout
from openma.ports.blobs import BlobStore
from openma.ports.sandbox import Sandbox, SnapshotRef
from openma.ports.telemetry import Telemetry

#: Snapshots live this long unless the caller says otherwise.
SNAPSHOT_TTL: Final = 7 * 24 * 3600.0
#: Reserved name prefix of the staged tarball; tar never archives it.
STAGING_PREFIX: Final = ".openma-snapshot-"
MASK: Final = "***"

_TAR_CHANGED: Final = ("changed as we read it", "removed before we read it")


def _staging_name() -> str:
    return f"{STAGING_PREFIX}{_secrets.token_hex(8)}.tgz"


async def _discard(sandbox: Sandbox, path: str, telemetry: Telemetry | None = None) -> None:
    """Remove the staged tarball; a failure is reported (``silent_catch``), never raised: tar excludes the
    reserved name, so a leftover never reaches a snapshot."""
    try:
        await sandbox.remove(path)
    except NotFound:
        pass  # already gone: what this wanted
    except SandboxError as exc:
        if telemetry is not None:
            telemetry.emit(
                "silent_catch",
                where="workspace.discard_staging",
                error=type(exc).__name__,
                code=exc.code,
                message=str(exc)[:300],
                sandbox_id=sandbox.id,
            )


async def snapshot_workspace(
    sandbox: Sandbox,
    blobs: BlobStore,
    *,
    key: str,
    ttl: float | timedelta | None = SNAPSHOT_TTL,
    timeout: float = 600.0,
    telemetry: Telemetry | None = None,
) -> SnapshotRef:
    """Store the sandbox's workspace as a gzipped tarball at ``key`` in ``blobs``; ``ttl=None`` keeps it.

    Raises :class:`SandboxTimeout` when tar runs past ``timeout`` and :class:`SandboxError` when it fails.
    GNU tar's "file changed as we read it" (exit 1) is accepted: the workspace is live, the snapshot is
    of the moment.
    """
    name = _staging_name()
    cmd = f"tar -czf {name} --exclude='{STAGING_PREFIX}*' ."
    try:
        result = await sandbox.exec(cmd, timeout=timeout)
        if result.timed_out:
            raise SandboxTimeout(f"workspace snapshot ran past {timeout:g}s", sandbox_id=sandbox.id)
        changed_only = result.exit_code == 1 and any(m in result.stderr for m in _TAR_CHANGED)
        if result.exit_code != 0 and not changed_only:
            raise SandboxError(
                f"workspace snapshot failed (tar exit {result.exit_code}): {result.stderr.strip()[:500]}",
                sandbox_id=sandbox.id,
            )
        data = await sandbox.read_file(name)
    finally:
        with anyio.CancelScope(shield=True):
            await _discard(sandbox, name, telemetry)
    digest = await anyio.to_thread.run_sync(_sha256, data)
    info = await blobs.put(key, data, content_type="application/gzip", metadata={"sha256": digest}, ttl=ttl)
    return SnapshotRef(key=key, size=len(data), sha256=digest, created_at=info.created_at, expires_at=info.expires_at)


def check_tarball(data: bytes) -> None:
    """Refuse a tarball that could write outside the directory it is extracted in.

    Refused (:class:`InvalidInput`): absolute member names, ``..`` segments, device nodes, hard links whose
    target is absolute or climbs out, and any member (or hard-link target) reached *through* a symlink
    that the archive itself creates (the classic ``link -> /etc`` then ``link/passwd``). Symlinks pointing
    anywhere are kept as symlinks (a virtualenv's ``bin/python -> /usr/bin/python3`` must round-trip);
    extraction never follows them because nothing is extracted beneath them.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput(f"snapshot is not a readable tarball ({exc})") from None

    def norm(name: str, what: str) -> str:
        if name.startswith("/") or "\0" in name:
            raise InvalidInput(f"snapshot member {what} {name!r} is an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise InvalidInput(f"snapshot member {what} {name!r} climbs out of the workspace")
        return "/".join(parts)

    links: set[str] = set()
    paths: list[str] = []
    for m in members:
        name = norm(m.name, "name")
        if m.ischr() or m.isblk():
            raise InvalidInput(f"snapshot member {m.name!r} is a device node")
        if m.issym():
            links.add(name)
        if m.islnk():
            paths.append(norm(m.linkname, "hard-link target"))
        paths.append(name)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise InvalidInput(f"snapshot member {path!r} lies beneath a symlink of the same archive")


async def restore_workspace(
    sandbox: Sandbox,
    blobs: BlobStore,
    ref: SnapshotRef,
    *,
    timeout: float = 600.0,
    telemetry: Telemetry | None = None,
) -> None:
    """Replace the sandbox's workspace with the snapshot ``ref``, in place.

    The bytes must match ``ref.sha256`` (else :class:`SandboxError`, nothing touched) and pass
    :func:`check_tarball` (else :class:`InvalidInput`, nothing touched). A missing or expired snapshot is
    :class:`NotFound`.
    """
    data = await blobs.get(ref.key)
    name = _staging_name()

    mismatch = SandboxError(f"snapshot {ref.key!r} does not match its sha256; refusing to restore it", key=ref.key)

    async def verify() -> None:
        if await anyio.to_thread.run_sync(_sha256, data) != ref.sha256:
            raise mismatch

    try:
        # The hash, the member check and the upload overlap; nothing is extracted until all three are done.
        async with anyio.create_task_group() as tg:
            tg.start_soon(verify)
            tg.start_soon(anyio.to_thread.run_sync, check_tarball, data)
            tg.start_soon(sandbox.write_file, name, data)
    except BaseExceptionGroup as group:
        with anyio.CancelScope(shield=True):
            await _discard(sandbox, name, telemetry)
        errors = _flatten(group)
        raise (mismatch if mismatch in errors else errors[0]) from None
    cmd = (
        f"find . -mindepth 1 -maxdepth 1 ! -name {name} -exec rm -rf -- {{}} + && tar -xzof {name}; "
        f"rc=$?; rm -f {name}; exit $rc"
    )
    try:
        result = await sandbox.exec(cmd, timeout=timeout)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _discard(sandbox, name, telemetry)
        raise
    if result.timed_out:  # the command removes the tarball itself when it runs to its end
        await _discard(sandbox, name, telemetry)
        raise SandboxTimeout(f"workspace restore ran past {timeout:g}s", sandbox_id=sandbox.id)
    if result.exit_code != 0:
        raise SandboxError(
            f"workspace restore failed (exit {result.exit_code}): {result.stderr.strip()[:500]}",
            sandbox_id=sandbox.id,
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _flatten(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_flatten(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


@functools.lru_cache(maxsize=64)
def _pattern(values: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(v) for v in values))


def _ordered(values: Iterable[str]) -> tuple[str, ...]:
    # Longest first, so a secret that contains another is masked whole.
    return tuple(sorted({v for v in values if v}, key=lambda v: (-len(v), v)))


def mask_secrets(text: str, values: Iterable[str], *, cut: bool = False) -> str:
    """``text`` with every occurrence of every value in ``values`` replaced by ``***``.

    ``cut=True`` says ``text`` was truncated: a tail that is the start of a secret (the rest fell past the
    cut) is masked too, so a cap can never leave half a secret behind.
    """
    ordered = _ordered(values)
    if not ordered or not text:
        return text
    text = _pattern(ordered).sub(MASK, text)
    if cut:
        tail = max(
            (n for v in ordered for n in range(1, min(len(v), len(text) + 1)) if text.endswith(v[:n])),
            default=0,
        )
        if tail:
            text = text[:-tail] + MASK
    return text
