"""A local Anthropic Messages API that the real ``anthropic`` SDK talks to: ``POST /v1/messages`` answering
with the streaming wire format (``message_start``, ``content_block_start/delta/stop``, ``message_delta``,
``message_stop``, ``ping``, ``error`` events) or an HTTP error, from a script of :class:`Reply` values.

Point the SDK at it with ``AsyncAnthropic(api_key=FakeAnthropic.API_KEY, base_url=fake.url)``; a request
with another key (``x-api-key`` or a bearer token) is answered 401 like the real API.
"""

from __future__ import annotations

from typing import Any

from tests.fakes._sse_app import Reply, ScriptedSSE, chunks, serve

Frame = tuple[str | None, Any]


class FakeAnthropic:
    API_KEY = "sk-ant-fake-0123456789abcdef"

    def __init__(self) -> None:
        self.app = ScriptedSSE(("/v1/messages",))
        self.app.expected_auth = [("x-api-key", self.API_KEY), ("authorization", f"Bearer {self.API_KEY}")]
        self._served = serve(self.app)
        self.url = self._served.url

    def __enter__(self) -> FakeAnthropic:
        self._served.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._served.stop()

    @property
    def requests(self) -> list[Any]:
        return self.app.requests

    def reply(self, *replies: Reply) -> None:
        self.app.add(*replies)


def message(
    blocks: list[dict[str, Any]],
    *,
    stop_reason: str | None = None,
    input_tokens: int = 12,
    output_tokens: int = 34,
    cache_read: int | None = None,
    chunk: int = 3,
    model: str = "claude-fake",
) -> list[Frame]:
    """The SSE frames of one streamed message of ``blocks`` (text, thinking with signature, tool_use): text
    and thinking cut into ``chunk``-character deltas, tool input JSON into ``chunk``-character pieces.
    ``stop_reason`` defaults to ``tool_use`` when a tool is called, else ``end_turn``."""
    import json

    usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": 1}
    if cache_read is not None:
        usage["cache_read_input_tokens"] = cache_read
    frames: list[Frame] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": usage,
                },
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(blocks):
        kind = block["type"]
        if kind == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in chunks(block["text"], chunk)]
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": piece} for piece in chunks(block["thinking"], chunk)]
            deltas.append({"type": "signature_delta", "signature": block.get("signature", "sig-fake")})
        elif kind == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = block.get("raw_input", json.dumps(block.get("input", {})))
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in chunks(raw, chunk)]
        else:
            raise ValueError(kind)
        frames.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        frames += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        frames.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    default_stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    frames.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason or default_stop, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    frames.append(("message_stop", {"type": "message_stop"}))
    return frames


def error_event(error_type: str = "overloaded_error", message: str = "Overloaded") -> Frame:
    return ("error", {"type": "error", "error": {"type": error_type, "message": message}})


def http_error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return Reply(status=status, body=body, headers={"request-id": "req_fake", **(headers or {})})
