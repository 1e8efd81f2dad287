"""The HTTP app of ``rqa serve``: OpenAI's chat completions, models and health, the chat page and its feedback.

Built on Starlette (through FastAPI's thin app and routing) and served by uvicorn. Every request is answered by
the ``BatchingEngine``; this module only translates HTTP. Bad input is always an answer, never a crash: a body
that is not JSON or not a conversation is 400, a model this server does not serve 404, a question that cannot fit
400, a full queue 503; a failure inside a batch is 500 for that batch and the server keeps serving.

A request waits for its answer while watching its connection: a client that goes away (mid-stream included)
cancels its job, which frees its place in the batch. ``--api_key_env`` makes every endpoint but the page itself
and ``/health`` require ``Authorization: Bearer <key>``; the page asks for the key when it is needed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from rqa.errors import RqaError
from rqa.serve.engine import BatchingEngine, Job, PromptTooLong, QueueFull
from rqa.serve.feedback import FeedbackLog
from rqa.serve.protocol import (
    BadRequest,
    UnknownModel,
    chunk,
    completion,
    error_body,
    finish_reason,
    new_completion_id,
    parse_chat_request,
    passages_json,
)

log = logging.getLogger("rqa")
POLL_S = 0.1  # how often a waiting request checks that its client is still there
OPEN_PATHS = frozenset({"/", "/health"})


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status)


def create_app(engine: BatchingEngine, feedback: FeedbackLog, max_new_tokens: int, api_key: str | None = None) -> Any:
    """The ASGI app; the engine's worker runs for the app's lifetime and drains its queue on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)  # SIGTERM: uvicorn has finished the requests in flight
            log.info("rqa serve stopped after %d batches; every request in flight was answered", engine.batches)

    app = FastAPI(title="rqa", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    page = files("rqa.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Any:
        if api_key and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error(401, "missing or wrong API key: send Authorization: Bearer <key>")
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.name,
            "waiting": engine.waiting,
            "batches": engine.batches,
            "largest_batch": engine.largest_batch,
            "cancelled": engine.cancelled,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "rqa"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            parsed = parse_chat_request(await request.body(), engine.name, max_new_tokens, engine.max_positions)
            engine.check_fits(parsed.example, parsed.max_new_tokens)
            job = engine.submit(parsed.example, parsed.passages, parsed.max_new_tokens, stream=parsed.stream)
        except (BadRequest, PromptTooLong) as problem:
            return error(400, str(problem))
        except UnknownModel as problem:
            return error(404, str(problem))
        except QueueFull as problem:
            return error(503, str(problem))
        if parsed.stream:
            return StreamingResponse(
                _stream(job, request, engine.name),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            await _wait(job, request)
        except ClientGone:
            return error(499, "the client closed the connection")
        except Exception as failure:  # a failed batch: this request fails, the server stays up
            return error(500, f"generation failed: {type(failure).__name__}: {failure}")
        return completion(job, engine.name)

    @app.post("/feedback")
    async def post_feedback(request: Request) -> Any:
        try:
            body = await request.json()
            row = feedback.append(body, model=engine.name)
        except ValueError as problem:  # JSON errors are ValueErrors too
            return error(400, f"bad feedback: {problem}")
        except RqaError as problem:
            return error(400, str(problem))
        return {"ok": True, "time": row["time"]}

    return app


async def _wait(job: Job, request: Request) -> Job:
    """The answered job; ``ClientGone`` (and the job cancelled) if the client disconnects first."""
    while True:
        done, _ = await asyncio.wait({job.future}, timeout=POLL_S)
        if done:
            return job.future.result()
        if await request.is_disconnected():
            job.cancelled = True
            raise ClientGone


async def _stream(job: Job, request: Request, model: str) -> AsyncIterator[str]:
    """Server-sent events: the role at once, then the answer's text as the batch generates it, the passages
    (with the finish reason), and ``[DONE]``.

    Whatever ends this generator early (the client leaving, the server shutting down) cancels the job.
    """
    completion_id = new_completion_id()
    sent = ""
    try:
        yield chunk(model, completion_id, {"role": "assistant", "content": ""})
        try:
            async for delta in _deltas(job, request):
                sent += delta
                yield chunk(model, completion_id, {"content": delta})
        except ClientGone:
            return
        except Exception as failure:
            yield f"data: {json.dumps(error_body(500, f'generation failed: {failure}'))}\n\n"
            return
        if job.answer.startswith(sent) and len(job.answer) > len(sent):
            yield chunk(model, completion_id, {"content": job.answer[len(sent) :]})
        elif not job.answer.startswith(sent):
            log.warning("serve: a streamed answer changed after it was sent (sent %r, answer %r)", sent, job.answer)
        yield chunk(model, completion_id, {}, finish_reason(job), passages=passages_json(job.hits))
        yield "data: [DONE]\n\n"
    finally:
        if not job.future.done():
            job.cancelled = True


async def _deltas(job: Job, request: Request) -> AsyncIterator[str]:
    """The job's new text as it arrives, until its answer is done (then its error, if it failed).

    ``ClientGone`` (and the job cancelled) if the client disconnects first.
    """
    assert job.deltas is not None
    while not job.future.done():
        waiting = asyncio.ensure_future(job.deltas.get())
        done, _ = await asyncio.wait({waiting, job.future}, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
        if waiting in done:
            yield waiting.result()
            continue
        waiting.cancel()
        if not done and await request.is_disconnected():
            job.cancelled = True
            raise ClientGone
    while not job.deltas.empty():
        yield job.deltas.get_nowait()
    job.future.result()
