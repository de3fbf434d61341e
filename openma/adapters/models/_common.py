"""What the provider adapters share: the stream driver (stall watchdog, prompt close, error wrapping),
tool-input parsing, ``Retry-After`` parsing and secret redaction.

A provider adapter subclasses :class:`StreamingModel` and supplies three things: ``_open`` (start the SDK's
streamed call), ``_translator`` (a fresh :class:`Translator` that turns the SDK's chunks into port events)
and ``_error`` (an SDK exception as a :class:`~openma.errors.ModelError`).
"""

from __future__ import annotations

import email.utils
import inspect
import json
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final

import anyio

from openma.errors import ModelError
from openma.ports.model import ModelEvent, ModelRequest

#: HTTP statuses worth retrying: timeout, rate limit, server errors, Anthropic's "overloaded".
RETRYABLE_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: How long closing an abandoned stream may take before it is left to the garbage collector.
CLOSE_GRACE: Final = 2.0
MASK: Final = "***"


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a provider asked to wait (``retry-after-ms`` or ``retry-after``: seconds or an HTTP date)."""
    if not headers:
        return None
    try:
        raw_ms = headers.get("retry-after-ms")
        if raw_ms:
            value = float(raw_ms) / 1000
            return value if math.isfinite(value) and value >= 0 else None
        raw = headers.get("retry-after")
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            when = email.utils.parsedate_to_datetime(raw)
            value = when.timestamp() - time.time()
        return max(0.0, value) if math.isfinite(value) else None
    except (TypeError, ValueError, OverflowError):
        return None


def parse_tool_input(provider: str, name: str, text: str) -> dict[str, Any]:
    """The JSON object a tool call's input deltas spell; ``""`` is ``{}``. Anything else is a ModelError."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise ModelError(
            f"{provider}: the model's input for tool {name!r} is not valid JSON", provider=provider, tool=name
        ) from None
    if not isinstance(value, dict):
        raise ModelError(
            f"{provider}: the model's input for tool {name!r} is a JSON {type(value).__name__}, not an object",
            provider=provider,
            tool=name,
        )
    return value


def split_options(
    create: Any, options: Mapping[str, Any], reserved: Iterable[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` split into keywords ``create`` accepts and the rest (sent in the body as ``extra_body``).

    ``reserved`` are the keywords the adapter sets itself; an option naming one of them is refused.
    """
    params = inspect.signature(create).parameters
    taken = set(reserved)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str) or key in taken or key.startswith("extra_"):
            raise ModelError(f"model option {key!r} cannot be set (the adapter sets it)", option=str(key))
        (kwargs if key in params and key != "self" else extra)[key] = value
    return kwargs, extra


class Translator:
    """Turns one call's SDK chunks into port events; ``finish`` yields the rest and the one ``Finish``."""

    def feed(self, chunk: Any) -> Iterable[ModelEvent]:  # pragma: no cover - overridden
        raise NotImplementedError

    def finish(self) -> Iterable[ModelEvent]:  # pragma: no cover - overridden
        raise NotImplementedError


class StreamingModel:
    """The stream driver every provider adapter shares (see :class:`openma.ports.model.Model`).

    * The call and every chunk after it must arrive within ``stall_timeout`` seconds, or the call fails with
      a retryable :class:`ModelError` (``reason="stalled"``).
    * However the iteration ends (done, an error, the consumer stopping or being cancelled), the HTTP
      response is closed at once, shielded from the cancellation so the connection is really released.
    * Every exception is a :class:`ModelError` whose message has the adapter's secrets masked.
    """

    name = "model"

    def __init__(self, *, model: str, stall_timeout: float) -> None:
        #: The model id used when a request names none (``ModelRequest.model == ""``).
        self.model = model
        self.stall_timeout = stall_timeout

    def _secrets(self) -> tuple[str | None, ...]:
        return ()

    def model_id(self, request: ModelRequest) -> str:
        """The provider's model id for ``request``: its ``model`` without a ``"<adapter name>:"`` prefix, or
        this adapter's default model when the request names none."""
        wanted = request.model or self.model
        prefix = f"{self.name}:"
        return wanted[len(prefix) :] if wanted.startswith(prefix) else wanted

    async def _open(self, request: ModelRequest) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _translator(self) -> Translator:  # pragma: no cover - overridden
        raise NotImplementedError

    def _error(self, exc: Exception) -> ModelError:  # pragma: no cover - overridden
        raise NotImplementedError

    def _stalled(self) -> ModelError:
        return ModelError(
            f"{self.name}: the model's stream sent nothing for {self.stall_timeout:g} s",
            retryable=True,
            provider=self.name,
            reason="stalled",
        )

    def _wrap(self, exc: Exception) -> ModelError:
        if isinstance(exc, ModelError):
            error = exc
        elif isinstance(exc, TimeoutError):
            error = self._stalled()
        else:
            error = self._error(exc)
        secrets = self._secrets()
        if any(s and s in error.message for s in secrets):
            details = {k: v for k, v in error.details.items() if k != "retryable"}
            error = ModelError(redact(error.message, *secrets), retryable=error.retryable, **details)
        return error

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Stream the answer to ``request`` (see :class:`openma.ports.model.Model`)."""
        sdk_stream: Any = None
        try:
            try:
                with anyio.fail_after(self.stall_timeout):
                    sdk_stream = await self._open(request)
                translator = self._translator()
                chunks = sdk_stream.__aiter__()
                while True:
                    try:
                        with anyio.fail_after(self.stall_timeout):
                            chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    events = list(translator.feed(chunk))
                    for event in events:
                        yield event
                events = list(translator.finish())
            except Exception as exc:
                error = self._wrap(exc)
                if any(s and s in str(exc) for s in self._secrets()):
                    raise error from None  # the SDK's message quotes a secret: do not chain it
                raise error from exc
            for event in events:
                yield event
        finally:
            if sdk_stream is not None:
                with anyio.move_on_after(CLOSE_GRACE, shield=True):
                    try:
                        await sdk_stream.close()
                    except Exception:  # pragma: no cover - a connection that fails to close is gone anyway
                        pass

    async def aclose(self) -> None:  # pragma: no cover - overridden
        """Release the client. Idempotent."""
