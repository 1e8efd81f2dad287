"""Stopping ``rqa serve``: SIGTERM finishes the request in flight, then the server exits.

In a file of its own that sorts after the other serving tests, so that they all share one server and only this
test stops it.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from serve_helpers import chat, questions, shared_server


@pytest.fixture(scope="module")
def server():
    return shared_server()


def test_sigterm_finishes_the_request_in_flight_then_exits(server):
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.update(r=chat(server, questions()[1], max_tokens=12)))
    thread.start()
    time.sleep(1.0)  # the request is in: generating 12 tokens over a long prompt takes longer on a CPU
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)

    assert result["r"].status_code == 200 and result["r"].json()["choices"][0]["message"]["content"]
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert "stopped" in server.log.read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=2)
