"""One real ``rqa serve`` (the embedded models, a small database) shared by the serving, backend and judge tests.

It is started once per test process through the real CLI, on a free localhost port, with an API key that every
client sends (``KEY_ENV``), and stopped with SIGTERM when the process exits. A test that stops it (the SIGTERM
test) leaves ``shared_server`` to start a fresh one for the next caller.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

EXAMPLE = Path(__file__).resolve().parents[1] / "example"
RQA = Path(sys.executable).parent / "rqa"
KEY_ENV = "RQA_TEST_SERVE_KEY"
KEY = "test-key-7f3a"
MAX_NEW_TOKENS = 12
DOCUMENTS = 12  # of example/documents.jsonl: enough for retrieval to matter, quick to index
QUESTIONS = 2  # of example/eval_w_qa.jsonl


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT
    data: Path  # documents.jsonl, qa.jsonl, index/, feedback.jsonl
    log: Path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}

    @property
    def feedback(self) -> Path:
        return self.data / "feedback.jsonl"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


_data_dir: Path | None = None
_server: Server | None = None


def data_dir() -> Path:
    """A small document database and QA file, written once per process."""
    global _data_dir
    if _data_dir is None:
        _data_dir = Path(tempfile.mkdtemp(prefix="rqa-serve-test-"))
        atexit.register(shutil.rmtree, _data_dir, True)
        lines = (EXAMPLE / "documents.jsonl").read_text(encoding="utf-8").splitlines()[:DOCUMENTS]
        (_data_dir / "documents.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        questions = (EXAMPLE / "eval_w_qa.jsonl").read_text(encoding="utf-8").splitlines()[:QUESTIONS]
        (_data_dir / "qa.jsonl").write_text("\n".join(questions) + "\n", encoding="utf-8")
    return _data_dir


def client_env() -> dict[str, str]:
    """The environment of the server and of in-process clients: the API key is set."""
    env = {k: v for k, v in os.environ.items() if k != "RQA_LOAD_PLUGINS"}
    env.update({KEY_ENV: KEY, "NO_COLOR": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(*extra: str, timeout: float = 240) -> Server:
    """``rqa serve`` over the small database; returns once ``/health`` answers."""
    data = data_dir()
    port = free_port()
    log = data / f"serve-{port}.log"
    command = [
        str(RQA),
        "serve",
        "--documents",
        str(data / "documents.jsonl"),
        "--index",
        str(data / "index"),
        "--port",
        str(port),
        "--max_new_tokens",
        str(MAX_NEW_TOKENS),
        "--batch_size",
        "8",
        "--max_queue",
        "8",
        "--api_key_env",
        KEY_ENV,
        "--feedback",
        str(data / "feedback.jsonl"),
        *extra,
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True, env=client_env())
    server = Server(process, f"http://127.0.0.1:{port}", data, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"rqa serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                atexit.register(server.stop)
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"rqa serve did not answer /health within {timeout} s:\n{log.read_text()[-3000:]}")


def shared_server() -> Server:
    """The process's server, started on first use (again if a test stopped it)."""
    global _server
    if _server is None or not _server.alive():
        _server = start_server()
    return _server


def chat(server: Server, question: str, **body: object) -> httpx.Response:
    payload = {"model": "rqa-embedded", "messages": [{"role": "user", "content": question}], **body}
    return httpx.post(f"{server.api}/chat/completions", json=payload, headers=server.headers, timeout=120)


def questions() -> list[str]:
    return [json.loads(line)["question"] for line in (data_dir() / "qa.jsonl").read_text().splitlines()]
