"""``rqa serve`` over real HTTP: the OpenAI shapes, streaming, bad input, load, disconnects and SIGTERM."""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_helpers import chat, questions, shared_server


@pytest.fixture(scope="module")
def server():
    return shared_server()


def post_raw(server, content: bytes | str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.api}/chat/completions",
        content=content,
        headers={**server.headers, "Content-Type": "application/json", **(headers or {})},
        timeout=60,
    )


def test_health_models_and_a_completion_with_its_passages(server):
    assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "ok"
    models = httpx.get(f"{server.api}/models", headers=server.headers, timeout=5).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "rqa-embedded"
    assert models["data"][0]["owned_by"] == "rqa"

    response = chat(server, questions()[0])

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "rqa-embedded"
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert len(body["passages"]) == 4 and all(p["page_content"] and p["score"] is not None for p in body["passages"])


def test_streaming_sends_openai_chunks_that_join_into_the_same_answer(server):
    question = questions()[0]
    whole = chat(server, question, max_tokens=6).json()["choices"][0]["message"]["content"]

    with httpx.stream(
        "POST",
        f"{server.api}/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "stream": True, "max_tokens": 6},
        headers=server.headers,
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]

    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    # as generated: a lone request decodes with prompt lookup, so a piece holds the tokens of one forward pass
    assert len(pieces) >= 2 and all(pieces)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and len(chunks[-1]["passages"]) == 4


def test_streamed_text_only_grows_and_never_shows_the_end_of_turn() -> None:
    from helpers import embedded_tokenizer

    from rqa.generation import answer_text, stop_token_ids
    from rqa.serve.engine import partial_text

    tokenizer = embedded_tokenizer()
    end_of_turn = "</answer>"  # several tokens: only the finished answer shows it is not text
    stop_ids = set(stop_token_ids(tokenizer, end_of_turn)[0])
    ids = tokenizer(" Descale it monthly: café-grade vinegar, 2 × rinse. </answer> trailing", add_special_tokens=False)
    ids = ids["input_ids"]
    final = answer_text(tokenizer, ids, end_of_turn)
    shown = [partial_text(tokenizer, ids[:n], end_of_turn, stop_ids) for n in range(1, len(ids) + 1)]
    assert all(final.startswith(text) for text in shown)
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))
    assert shown[-1] == final == "Descale it monthly: café-grade vinegar, 2 × rinse."


def test_bad_requests_get_clear_errors(server):
    def message(response: httpx.Response, status: int) -> str:
        assert response.status_code == status, response.text
        return response.json()["error"]["message"]

    assert "not valid JSON" in message(post_raw(server, b"{not json"), 400)
    assert "JSON object" in message(post_raw(server, b"[1, 2]"), 400)
    assert "'messages'" in message(post_raw(server, json.dumps({"model": "rqa-embedded"})), 400)
    assert "last message" in message(chat(server, "   "), 400)
    assert "max_tokens" in message(chat(server, "Hi", max_tokens=0), 400)
    assert "max_tokens" in message(chat(server, "Hi", max_tokens=10**7), 400)
    assert "passages" in message(chat(server, "Hi", passages=[{"title": "no content"}]), 400)
    assert "'gpt-9' is not served" in message(chat(server, "Hi", model="gpt-9"), 404)
    long_question = "Why does the kettle click? " * 400  # well over --max_seq_length 2048 tokens
    assert "the question alone is" in message(chat(server, long_question), 400)
    assert "API key" in message(post_raw(server, "{}", {"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200  # open without a key


def test_concurrent_and_malformed_requests_all_get_answers_in_shared_batches(server):
    good = [questions()[i % len(questions())] for i in range(6)]

    def send(index: int) -> httpx.Response:
        if index % 3 == 2:  # every third request is malformed, interleaved with the good ones
            return post_raw(server, b'{"messages": [')
        return chat(server, good[index // 3 * 2 + index % 3], max_tokens=4, passages=[])  # short prompts: quick

    batches_before = httpx.get(f"{server.url}/health", timeout=5).json()["batches"]
    with ThreadPoolExecutor(max_workers=9) as pool:
        responses = list(pool.map(send, range(9)))

    for index, response in enumerate(responses):
        if index % 3 == 2:
            assert response.status_code == 400
        else:
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"]
    health = httpx.get(f"{server.url}/health", timeout=5).json()
    assert health["status"] == "ok"
    assert health["batches"] - batches_before < 6  # six good requests, answered in fewer batches
    assert health["largest_batch"] > 1


def test_a_full_queue_answers_503_and_the_server_recovers(server):
    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(lambda _: chat(server, "Hi", max_tokens=1, passages=[]).status_code, range(24)))

    assert set(statuses) <= {200, 503}
    assert 503 in statuses and 200 in statuses  # --max_queue 8
    assert chat(server, "Hi", max_tokens=1, passages=[]).status_code == 200


def test_a_client_leaving_mid_stream_frees_its_slot(server):
    cancelled_before = httpx.get(f"{server.url}/health", timeout=5).json()["cancelled"]
    body = {"messages": [{"role": "user", "content": questions()[0]}], "stream": True, "max_tokens": 400}
    with httpx.stream("POST", f"{server.api}/chat/completions", json=body, headers=server.headers) as response:
        first = next(response.iter_lines())  # the role chunk: the request is in
        assert first.startswith("data: ")
    # the connection is closed here, long before 400 tokens could be generated on a CPU
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/health", timeout=5).json()["cancelled"] == cancelled_before:
        assert time.monotonic() < deadline, "the abandoned request was never cancelled"
        time.sleep(0.2)
    assert chat(server, questions()[1], max_tokens=2).status_code == 200


def test_feedback_is_appended_and_bad_feedback_refused(server):
    record = {"question": "Q?", "answer": "A.", "passages": [{"page_content": "P"}], "rating": "down"}
    response = httpx.post(f"{server.url}/feedback", json={**record, "comment": "wrong"}, headers=server.headers)
    assert response.status_code == 200, response.text
    rows = [json.loads(line) for line in server.feedback.read_text().splitlines()]
    assert {**record, "comment": "wrong", "model": "rqa-embedded"}.items() <= rows[-1].items()
    bad = httpx.post(f"{server.url}/feedback", json={**record, "rating": "meh"}, headers=server.headers)
    assert bad.status_code == 400 and "rating" in bad.json()["error"]["message"]
