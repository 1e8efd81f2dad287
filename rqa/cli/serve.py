"""``rqa serve``: an OpenAI-compatible API and a chat page over a trained run (or the embedded models)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from rqa.cli.ask import _assistant_options, _load
from rqa.cli.options import option

log = logging.getLogger("rqa")


@click.command("serve")
@_assistant_options
@option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@option("--model_name", help="Model id clients send and /v1/models lists (default: the run directory's name).")
@option("--batch_size", type=int, default=16, show_default=True, help="Most requests answered in one batch.")
@option(
    "--batch_wait_ms",
    type=float,
    default=10.0,
    show_default=True,
    help="How long the first waiting request waits for others to join its batch.",
)
@option("--max_queue", type=int, default=64, show_default=True, help="Waiting requests beyond this get 503.")
@option("--api_key_env", help="Name of an environment variable holding the key every API request must bear.")
@option("--feedback", help="Feedback JSONL written by the chat page (default: feedback.jsonl in the run, else here).")
def serve(**kwargs: Any) -> None:
    """Serve the model over HTTP: /v1/chat/completions (streaming too), /v1/models, /health, and a chat page at /."""
    from rqa.backends import is_local
    from rqa.display import make_console
    from rqa.errors import RqaError

    if kwargs["batch_size"] < 1 or kwargs["max_queue"] < 1 or kwargs["batch_wait_ms"] < 0:
        raise RqaError("--batch_size and --max_queue must be at least 1, --batch_wait_ms at least 0")
    if not is_local(kwargs["generator"]):
        raise RqaError("rqa serve answers with its local model (batched): --generator must be hf")
    api_key = None
    if kwargs["api_key_env"]:
        api_key = os.environ.get(kwargs["api_key_env"])
        if not api_key:
            raise RqaError(f"the environment variable {kwargs['api_key_env']} (--api_key_env) is not set")
    console = make_console()
    settings, assistant = _load(kwargs, console)

    import uvicorn

    from rqa.serve.app import create_app
    from rqa.serve.engine import BatchingEngine
    from rqa.serve.feedback import FeedbackLog

    run = settings.run
    name = kwargs["model_name"] or (Path(kwargs["model"]).resolve().name if kwargs["model"] else "rqa-embedded")
    feedback = Path(kwargs["feedback"] or (run.directory / "feedback.jsonl" if run else "feedback.jsonl"))
    engine = BatchingEngine(
        assistant,
        batch_size=kwargs["batch_size"],
        wait_s=kwargs["batch_wait_ms"] / 1000,
        max_queue=kwargs["max_queue"],
        name=name,
    )
    app = create_app(engine, FeedbackLog(feedback), assistant.max_new_tokens, api_key)
    console.print(
        f"Serving [bold]{name}[/] on http://{kwargs['host']}:{kwargs['port']} "
        f"(chat page at /, API at /v1); feedback goes to {feedback}",
        highlight=False,
    )
    # uvicorn handles SIGTERM and SIGINT: stop accepting, finish the requests in flight, then the app's shutdown
    uvicorn.run(app, host=kwargs["host"], port=kwargs["port"], log_level="warning", timeout_graceful_shutdown=None)
