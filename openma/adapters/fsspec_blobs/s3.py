"""The ``s3://`` engine (AWS S3, Cloudflare R2, MinIO, any S3-compatible endpoint) through s3fs.

Objects are plain S3 objects: the bytes, the native ``Content-Type``, and one user-metadata entry
(``x-amz-meta-openma``: base64 of a small JSON record with the caller's metadata, the creation time and
the expiry), so data and record change together in one request. Etags are S3's, unquoted.

* **Conditions are the service's own**: ``If-None-Match: *`` and ``If-Match: <etag>`` on ``PutObject`` and
  ``CompleteMultipartUpload``, so they are exact across processes and hosts. An expired object counts as
  absent: a refused ``If-None-Match`` looks at the object and, if it has expired, replaces exactly that
  version with ``If-Match``.
* **Streaming**: a stream is buffered up to one part (8 MiB); a longer one becomes a multipart upload with
  a few parts in flight, so memory stays at a few parts whatever the object's size. A failed or cancelled
  upload is aborted; ``sweep_expired`` also aborts uploads left by a crashed process.
* **Reads** are one ``GetObject`` (with ``Range`` for a range), streamed chunk by chunk: S3 serves one
  version per request, so a concurrent put never tears a read.
* **The event loop is never blocked**: s3fs runs on fsspec's own I/O loop thread, and each call is handed
  to it and awaited, on asyncio and trio alike.
* ``.openma/`` under the store's root holds the expiry index (one small object per TTL'd put).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import Any, Final, TypeVar

import anyio
import sniffio

from openma.adapters.fsspec_blobs._common import (
    EXPIRY_DIR,
    INTERNAL,
    Meta,
    Source,
    WriteSpec,
    marker_time,
    pieces,
)
from openma.errors import ConfigError, Conflict, StorageUnavailable
from openma.ports.blobs import DEFAULT_CONTENT_TYPE

T = TypeVar("T")

PART_SIZE: Final = 8 << 20
PARTS_IN_FLIGHT: Final = 4
HEADS_IN_FLIGHT: Final = 16
MAX_KEYS: Final = 1000
#: Sorts after every internal object name (they are ASCII), so a listing can jump past them.
_AFTER_INTERNAL: Final = INTERNAL + "\x7f"


class _Precondition(StorageUnavailable):
    """S3 refused a precondition (412). Handled inside the engine; the base class only matters if one leaks."""


class _Missing(StorageUnavailable):
    """No such key or upload (404)."""


class _BadRange(StorageUnavailable):
    """The range starts past the end of the object (416)."""


def _code(exc: BaseException) -> str | None:
    for candidate in (exc, exc.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code is not None:
                return str(code)
    return None


async def on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on ``loop`` (another thread's loop) and await its result from any anyio backend."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        if sniffio.current_async_library() == "asyncio":
            return await asyncio.wrap_future(future)
        return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
    except BaseException:
        future.cancel()
        raise


def _record(meta: Meta) -> str:
    raw = json.dumps(
        {"v": 1, "md": meta.metadata, "c": meta.created_ms, "x": meta.expires_ms},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii")


def _ms(value: object) -> int:
    return int(value.timestamp() * 1000) if isinstance(value, datetime) else 0


def _meta(key: str, response: dict[str, Any]) -> Meta:
    size = int(response.get("ContentLength") or 0)
    content_range = response.get("ContentRange")
    if isinstance(content_range, str) and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isascii() and total.isdigit():
            size = int(total)
    created = _ms(response.get("LastModified"))
    metadata: dict[str, str] = {}
    expires: int | None = None
    raw = (response.get("Metadata") or {}).get("openma")
    if raw:
        try:
            record = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            metadata = {str(k): str(v) for k, v in record["md"].items()}
            created = int(record["c"])
            expires = int(record["x"]) if record["x"] is not None else None
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # not ours: served as an unrecorded object
    return Meta(
        key=key,
        size=size,
        etag=str(response.get("ETag", "")).strip('"'),
        content_type=str(response.get("ContentType") or DEFAULT_CONTENT_TYPE),
        metadata=metadata,
        created_ms=created,
        expires_ms=expires,
    )


class S3Engine:
    capabilities: Final = frozenset({"concurrent_writers", "multi_process", "nested_keys"})

    def __init__(self, fs: Any, root: str, *, part_size: int = PART_SIZE, parts_in_flight: int = PARTS_IN_FLIGHT):
        if part_size < 5 << 20:
            raise ConfigError("S3 multipart parts must be at least 5 MiB")
        self.fs = fs
        bucket, _, prefix = root.strip("/").partition("/")
        if not bucket:
            raise ConfigError(f"blob_url must name a bucket: s3://bucket[/prefix], got s3://{root}")
        self.bucket = bucket
        self.base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.identity = f"s3://{bucket}/{self.base}"
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self._conditional_delete = True

    def __repr__(self) -> str:
        return f"S3Engine({self.identity!r})"

    async def _call(self, method: str, **kwargs: Any) -> Any:
        """One S3 call on s3fs's loop, with its errors sorted into what the engine acts on."""
        try:
            return await on_loop(self.fs.loop, self.fs._call_s3(method, Bucket=self.bucket, **kwargs))
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise self._sorted(exc, method) from exc

    def _sorted(self, exc: BaseException, method: str) -> BaseException:
        code = _code(exc)
        if code == "NoSuchBucket":
            return ConfigError(f"S3 bucket {self.bucket!r} does not exist", bucket=self.bucket)
        if code in ("PreconditionFailed", "412") or isinstance(exc, FileExistsError):
            return _Precondition(f"S3 {method}: precondition failed", code=code)
        if code in ("InvalidRange", "416"):
            return _BadRange(f"S3 {method}: range not satisfiable", code=code)
        if code in ("NoSuchKey", "404", "NotFound", "NoSuchUpload") or isinstance(exc, FileNotFoundError):
            return _Missing(f"S3 {method}: not found", code=code)
        return StorageUnavailable(f"S3 {method} on {self.identity!r} failed: {exc}", code=code)

    async def _bridge(self, awaitable: Awaitable[T]) -> T:
        async def run() -> T:
            return await awaitable

        return await on_loop(self.fs.loop, run())

    async def setup(self) -> None:
        try:
            await on_loop(self.fs.loop, self.fs._call_s3("head_bucket", Bucket=self.bucket))
        except (FileNotFoundError, OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError) or _code(exc) in ("404", "NoSuchBucket"):
                raise ConfigError(f"S3 bucket {self.bucket!r} does not exist", bucket=self.bucket) from exc
            if isinstance(exc, PermissionError) or _code(exc) in ("403", "AccessDenied"):
                return  # a key scoped to objects may not be allowed to look at the bucket itself
            raise StorageUnavailable(f"S3 bucket {self.bucket!r} is unreachable: {exc}") from exc

    # -- writes

    async def _condition(self, spec: WriteSpec, now_ms: int, *, optimistic: bool) -> dict[str, str]:
        """The S3 precondition that makes this put exact, given the object's current state."""
        if spec.if_match is None and not spec.if_none_match:
            return {}
        if spec.if_none_match and optimistic:
            return {"IfNoneMatch": "*"}
        current = await self.stat(spec.key)
        live = current is not None and current.live(now_ms)
        if spec.if_match is not None:
            if current is None or not live or current.etag != spec.if_match:
                raise self._conflict(spec)
            return {"IfMatch": f'"{current.etag}"'}
        if current is None:
            return {"IfNoneMatch": "*"}
        if live:
            raise self._conflict(spec)
        return {"IfMatch": f'"{current.etag}"'}  # replace exactly the expired version

    @staticmethod
    def _conflict(spec: WriteSpec) -> Conflict:
        if spec.if_match is not None:
            return Conflict(f"blob {spec.key!r} does not have etag {spec.if_match!r} (if_match)", key=spec.key)
        return Conflict(f"blob {spec.key!r} already exists (if_none_match='*')", key=spec.key)

    async def _conditional(self, spec: WriteSpec, now_ms: int, send: Any) -> dict[str, Any]:
        """Call ``send(condition)`` until it is accepted or the condition is known to fail."""
        condition = await self._condition(spec, now_ms, optimistic=True)
        for _ in range(5):
            try:
                response: dict[str, Any] = await send(condition)
                return response
            except (_Precondition, _Missing) as exc:
                if isinstance(exc, _Missing) and "IfMatch" not in condition:
                    raise StorageUnavailable(f"S3 write of {spec.key!r} failed: {exc}") from exc
                # refused, or (with If-Match) the object vanished: look again
                if spec.if_match is not None:
                    raise self._conflict(spec) from None
                condition = await self._condition(spec, now_ms, optimistic=False)
        raise self._conflict(spec)

    async def write(self, spec: WriteSpec, source: Source, now_ms: int) -> Meta:
        meta = Meta(
            key=spec.key,
            size=0,
            etag="",
            content_type=spec.content_type,
            metadata=spec.metadata,
            created_ms=spec.created_ms,
            expires_ms=spec.expires_ms,
        )
        head = {"Key": self.base + spec.key, "ContentType": spec.content_type, "Metadata": {"openma": _record(meta)}}
        if isinstance(source, bytes):
            body, rest = source, None
        else:
            rest = aiter(pieces(source, self.part_size))
            try:
                body = await anext(rest)
            except StopAsyncIteration:
                body, rest = b"", None
            if rest is not None and len(body) < self.part_size:
                rest = None  # a short stream: pieces() only yields a short piece last
        if rest is None:

            async def put(condition: dict[str, str]) -> dict[str, Any]:
                result: dict[str, Any] = await self._call("put_object", Body=body, **head, **condition)
                return result

            response = await self._conditional(spec, now_ms, put)
            size = len(body)
        else:
            response, size = await self._multipart(spec, now_ms, head, body, rest)
        return Meta(
            key=spec.key,
            size=size,
            etag=str(response.get("ETag", "")).strip('"'),
            content_type=spec.content_type,
            metadata=spec.metadata,
            created_ms=spec.created_ms,
            expires_ms=spec.expires_ms,
        )

    async def _multipart(
        self, spec: WriteSpec, now_ms: int, head: dict[str, Any], first: bytes, rest: AsyncIterator[bytes]
    ) -> tuple[dict[str, Any], int]:
        upload = await self._call("create_multipart_upload", **head)
        upload_id = upload["UploadId"]
        parts: dict[int, str] = {}
        slots = anyio.Semaphore(self.parts_in_flight)
        size = 0

        async def send(number: int, data: bytes) -> None:
            try:
                out = await self._call("upload_part", Key=head["Key"], UploadId=upload_id, PartNumber=number, Body=data)
                parts[number] = out["ETag"]
            finally:
                slots.release()

        try:
            async with anyio.create_task_group() as tg:
                number = 0
                piece: bytes | None = first
                while piece is not None:
                    number += 1
                    size += len(piece)
                    await slots.acquire()
                    tg.start_soon(send, number, piece)
                    piece = await anext(rest, None)

            async def complete(condition: dict[str, str]) -> dict[str, Any]:
                result: dict[str, Any] = await self._call(
                    "complete_multipart_upload",
                    Key=head["Key"],
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]},
                    **condition,
                )
                return result

            response = await self._conditional(spec, now_ms, complete)
        except BaseException:
            with anyio.CancelScope(shield=True), suppress(Exception):
                await self._call("abort_multipart_upload", Key=head["Key"], UploadId=upload_id)
            raise
        return response, size

    # -- reads

    async def stat(self, key: str) -> Meta | None:
        try:
            response = await self._call("head_object", Key=self.base + key)
        except _Missing:
            return None
        return _meta(key, response)

    def _range(self, offset: int, length: int | None) -> dict[str, str]:
        if offset == 0 and length is None:
            return {}
        end = "" if length is None else str(offset + length - 1)
        return {"Range": f"bytes={offset}-{end}"}

    async def _get(self, key: str, offset: int, length: int | None) -> tuple[Meta, Any] | Meta | None:
        """A streaming GET: ``(meta, body)``; just the meta when the range is empty; ``None`` if missing."""
        if length == 0:
            return await self.stat(key)
        try:
            response = await self._call("get_object", Key=self.base + key, **self._range(offset, length))
        except _Missing:
            return None
        except _BadRange:  # past the end (or an empty object)
            return await self.stat(key)
        return _meta(key, response), response["Body"]

    async def read(self, key: str, offset: int, length: int | None) -> tuple[Meta, bytes] | None:
        got = await self._get(key, offset, length)
        if got is None or isinstance(got, Meta):
            return None if got is None else (got, b"")
        meta, body = got
        try:
            data: bytes = await self._bridge(body.read())
        finally:
            with anyio.CancelScope(shield=True):
                await self._bridge(_close(body))
        return meta, data

    @asynccontextmanager
    async def open(self, key: str, offset: int, length: int | None) -> AsyncIterator[_S3Reader | None]:
        got = await self._get(key, offset, length)
        if got is None:
            yield None
            return
        reader = _S3Reader(self, got, None) if isinstance(got, Meta) else _S3Reader(self, got[0], got[1])
        try:
            yield reader
        finally:
            with anyio.CancelScope(shield=True):
                await reader.aclose()

    # -- deletes

    async def remove(self, key: str, if_etag: str | None = None) -> bool:
        if if_etag is not None and self._conditional_delete:
            try:
                await self._call("delete_object", Key=self.base + key, IfMatch=f'"{if_etag}"')
                return True
            except (_Precondition, _Missing):
                return False
            except StorageUnavailable as exc:
                if exc.details.get("code") not in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                    raise
                self._conditional_delete = False  # an S3-compatible store without conditional deletes
        if if_etag is not None:
            current = await self.stat(key)
            if current is None or current.etag != if_etag:
                return False
        try:
            await self._call("delete_object", Key=self.base + key)
        except _Missing:
            return False
        return True

    # -- listing

    async def _list(self, prefix: str, after: str, limit: int) -> tuple[list[str], bool]:
        kwargs: dict[str, Any] = {"Prefix": self.base + prefix, "MaxKeys": min(limit, MAX_KEYS)}
        if after:
            kwargs["StartAfter"] = self.base + after
        response = await self._call("list_objects_v2", **kwargs)
        keys = [item["Key"][len(self.base) :] for item in response.get("Contents", [])]
        return keys, not response.get("IsTruncated", False)

    async def scan(self, prefix: str, after: str, limit: int) -> tuple[list[Meta], str, bool]:
        keys, done = await self._list(prefix, after, limit)
        last = keys[-1] if keys else after
        if last.startswith(INTERNAL):
            last = _AFTER_INTERNAL
        keys = [k for k in keys if not k.startswith(INTERNAL)]
        metas: list[Meta | None] = [None] * len(keys)
        slots = anyio.Semaphore(HEADS_IN_FLIGHT)

        async def head(i: int, key: str) -> None:
            async with slots:
                metas[i] = await self.stat(key)

        async with anyio.create_task_group() as tg:
            for i, key in enumerate(keys):
                tg.start_soon(head, i, key)
        return [m for m in metas if m is not None], last, done

    # -- expiry index and upkeep

    async def put_marker(self, name: str, key: str) -> None:
        await self._call("put_object", Key=self.base + name, Body=key.encode("utf-8"))

    async def due_markers(self, upto_ms: int) -> list[tuple[str, str]]:
        names: list[str] = []
        after = ""
        while True:
            keys, done = await self._list(EXPIRY_DIR, after, MAX_KEYS)
            stop = False
            for name in keys:
                when = marker_time(name)
                if when is None:
                    continue
                if when > upto_ms:
                    stop = True
                    break
                names.append(name)
            if stop or done or not keys:
                break
            after = keys[-1]
        bodies: list[str | None] = [None] * len(names)
        slots = anyio.Semaphore(HEADS_IN_FLIGHT)

        async def fetch(i: int, name: str) -> None:
            async with slots:
                got = await self.read(name, 0, None)
                if got is not None:
                    with suppress(UnicodeDecodeError):
                        bodies[i] = got[1].decode("utf-8")

        async with anyio.create_task_group() as tg:
            for i, name in enumerate(names):
                tg.start_soon(fetch, i, name)
        return [(n, b) for n, b in zip(names, bodies, strict=True) if b is not None]

    async def remove_marker(self, name: str) -> None:
        with suppress(_Missing):
            await self._call("delete_object", Key=self.base + name)

    async def clean_uploads(self, older_than_ms: int) -> int:
        response = await self._call("list_multipart_uploads", Prefix=self.base)
        removed = 0
        for upload in response.get("Uploads", []):
            if _ms(upload.get("Initiated")) < older_than_ms:
                with suppress(_Missing):
                    await self._call("abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])
                    removed += 1
        return removed

    async def aclose(self) -> None:
        return None


async def _close(body: Any) -> None:
    body.close()


class _S3Reader:
    """One GET's body, read chunk by chunk on s3fs's loop."""

    def __init__(self, engine: S3Engine, meta: Meta, body: Any) -> None:
        self._engine = engine
        self.meta = meta
        self._body = body

    async def read_chunk(self, n: int) -> bytes:
        if self._body is None:
            return b""
        chunk: bytes = await self._engine._bridge(self._body.read(n))
        return chunk

    async def aclose(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            await self._engine._bridge(_close(body))
