"""A local OpenAI-compatible chat-completions server that the real ``openai`` SDK talks to:
``POST /v1/chat/completions`` answering with the streaming wire format (``chat.completion.chunk`` frames,
a usage chunk with empty ``choices``, ``data: [DONE]``), an error object mid-stream, or an HTTP error, from a
script of :class:`Reply` values.

Point the SDK at it with ``AsyncOpenAI(api_key=FakeOpenAI.API_KEY, base_url=fake.url + "/v1")``; a request
with another bearer token is answered 401 like the real API.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fakes._sse_app import Reply, ScriptedSSE, chunks, serve

Frame = tuple[str | None, Any]


class FakeOpenAI:
    API_KEY = "sk-proj-fake-0123456789abcdef"

    def __init__(self) -> None:
        self.app = ScriptedSSE(("/v1/chat/completions",))
        self.app.expected_auth = [("authorization", f"Bearer {self.API_KEY}")]
        self._served = serve(self.app)
        self.url = self._served.url + "/v1"

    def __enter__(self) -> FakeOpenAI:
        self._served.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._served.stop()

    @property
    def requests(self) -> list[Any]:
        return self.app.requests

    def reply(self, *replies: Reply) -> None:
        self.app.add(*replies)


def _chunk(delta: dict[str, Any], finish_reason: str | None = None, model: str = "gpt-fake") -> Frame:
    return (
        None,
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        },
    )


def completion(
    blocks: list[dict[str, Any]],
    *,
    finish_reason: str | None = None,
    prompt_tokens: int = 21,
    completion_tokens: int = 8,
    cached_tokens: int | None = None,
    chunk: int = 3,
    usage: bool = True,
    reasoning_field: str = "reasoning_content",
) -> list[Frame]:
    """The SSE frames of one streamed completion of ``blocks`` (text, thinking, tool_use), cut into
    ``chunk``-character pieces; ``finish_reason`` defaults to ``tool_calls`` when a tool is called, else
    ``stop``; the usage chunk and ``[DONE]`` follow."""
    frames: list[Frame] = [_chunk({"role": "assistant", "content": ""})]
    calls = 0
    for block in blocks:
        kind = block["type"]
        if kind == "text":
            frames += [_chunk({"content": piece}) for piece in chunks(block["text"], chunk)]
        elif kind == "thinking":
            frames += [_chunk({reasoning_field: piece}) for piece in chunks(block["thinking"], chunk)]
        elif kind == "tool_use":
            raw = block.get("raw_input", json.dumps(block.get("input", {})))
            pieces = chunks(raw, chunk)
            first = {"index": calls, "id": block["id"], "type": "function", "function": {"name": block["name"]}}
            frames.append(_chunk({"tool_calls": [{**first, "function": {**first["function"], "arguments": ""}}]}))
            frames += [_chunk({"tool_calls": [{"index": calls, "function": {"arguments": piece}}]}) for piece in pieces]
            calls += 1
        else:
            raise ValueError(kind)
    frames.append(_chunk({}, finish_reason or ("tool_calls" if calls else "stop")))
    if usage:
        counts: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if cached_tokens is not None:
            counts["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
        frames.append(
            (
                None,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": "gpt-fake",
                    "choices": [],
                    "usage": counts,
                },
            )
        )
    frames.append((None, "[DONE]"))
    return frames


def error_object(
    message: str = "The server is overloaded", code: Any = "server_error", kind: str = "server_error"
) -> Frame:
    """An error object sent in place of a chunk (what OpenAI and vLLM do when a stream fails)."""
    return (None, {"error": {"message": message, "type": kind, "param": None, "code": code}})


def http_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return Reply(status=status, body=body, headers={"x-request-id": "req_fake", **(headers or {})})
