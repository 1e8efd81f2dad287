"""OpenAI's chat-completions shapes: reading a request body, writing a completion and its stream chunks.

Requests are read by hand rather than through a pydantic model so that every problem is a 400 with one plain
message (OpenAI's ``{"error": {...}}`` body), whatever the client sent. Responses follow OpenAI's fields, plus
``passages``: the passages the answer was generated from, which OpenAI clients ignore and rqa's page shows.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rqa.backends import documents_from_json, example_from_messages
from rqa.errors import RqaError
from rqa.schema import Document, Example


class BadRequest(RqaError):
    """A request rqa cannot answer as sent (400)."""


class UnknownModel(RqaError):
    """A request for a model this server does not serve (404)."""


@dataclass
class ChatRequest:
    example: Example
    passages: list[Document] | None
    max_new_tokens: int
    stream: bool


def parse_chat_request(raw: bytes, served: str, default_max_tokens: int, limit: int | None) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body; raise ``BadRequest`` or ``UnknownModel`` with a plain message."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model not in (None, "", served):
        raise UnknownModel(f"model {model!r} is not served here; this server serves {served!r} (GET /v1/models)")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if limit is not None and max_tokens > limit:
        raise BadRequest(f"max_tokens {max_tokens} is more than the model's context of {limit} tokens")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false")
    try:
        example = example_from_messages(body.get("messages"))
        passages = documents_from_json(body["passages"]) if body.get("passages") is not None else None
    except RqaError as error:
        raise BadRequest(str(error)) from None
    return ChatRequest(example, passages, max_tokens, stream)


def passages_json(hits: list[tuple[Document, float | None]]) -> list[dict[str, Any]]:
    return [{**document.to_dict(), "score": score} for document, score in hits]


def _envelope(kind: str, model: str, completion_id: str) -> dict[str, Any]:
    return {"id": completion_id, "object": kind, "created": int(time.time()), "model": model}


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def finish_reason(job: Any) -> str:
    return "length" if job.completion_tokens >= job.max_new_tokens else "stop"


def completion(job: Any, model: str) -> dict[str, Any]:
    """The non-streaming response."""
    return {
        **_envelope("chat.completion", model, new_completion_id()),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": job.answer},
                "finish_reason": finish_reason(job),
            }
        ],
        "usage": {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens,
        },
        "passages": passages_json(job.hits),
    }


def chunk(model: str, completion_id: str, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    """One server-sent event holding a ``chat.completion.chunk``."""
    payload = {
        **_envelope("chat.completion.chunk", model, completion_id),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}.get(
        status, "server_error"
    )
    return {"error": {"message": message, "type": kind, "code": status}}
