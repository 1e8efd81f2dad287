"""Generator backends: the registry kind, the ``openai`` backend against a real ``rqa serve``, and equal answers.

``rqa evaluate --generator openai:...`` pointed at ``rqa serve`` must give exactly the answers of the local
``hf`` path: same retrieval, same prompt ids (the server renders the run's prompt over the passages the client
sends), same greedy decoding.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from serve_helpers import KEY, KEY_ENV, MAX_NEW_TOKENS, free_port, questions, shared_server

from rqa import contracts
from rqa.backends import build_generator, choose_generator, example_from_messages, messages_for
from rqa.cli import cli
from rqa.errors import ComponentOptionError, RqaError, UnknownComponentError
from rqa.plugins import load_plugins
from rqa.schema import Example, Turn


@pytest.fixture(scope="module")
def server():
    return shared_server()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def openai_spec(server, **options: object) -> str:
    extra = "".join(f",{k}={v}" for k, v in options.items())
    return f"openai:base_url={server.api},api_key_env={KEY_ENV}{extra}"


def evaluate(server, output: Path, *extra: str) -> list[dict]:
    data = server.data
    args = [
        "evaluate",
        *("--data", str(data / "qa.jsonl"), "--documents", str(data / "documents.jsonl")),
        *("--index", str(data / "index"), "--max_new_tokens", str(MAX_NEW_TOKENS), "--batch_size", "4", "--top_k", "1"),
        *("--output_dir", str(output), *extra),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


def test_generators_are_a_registry_kind_with_hf_and_openai():
    registry = load_plugins()["generators"]
    assert {"hf", "openai"} <= set(registry.names())
    assert all(c.package == "rqa" and c.description for c in registry if c.name in ("hf", "openai"))
    with pytest.raises(UnknownComponentError, match=r"unknown generator 'opneai'. Did you mean 'openai'\?"):
        choose_generator("opneai:base_url=http://x")
    with pytest.raises(ComponentOptionError, match="missing required option 'base_url'"):
        choose_generator("openai")
    with pytest.raises(ComponentOptionError, match="RQA_NOT_SET_ANYWHERE"):
        build_generator("openai:base_url=http://127.0.0.1:9/v1,api_key_env=RQA_NOT_SET_ANYWHERE")


def test_messages_round_trip_into_the_example_the_server_answers():
    example = Example("And the cord?", "", (), (Turn("user", "Hi"), Turn("assistant", "Hello!")))
    messages = messages_for(example, "instruction and passages")
    assert messages[0] == {"role": "system", "content": "instruction and passages"}
    assert example_from_messages(messages) == example  # the system text is the server's formatter's job
    with pytest.raises(RqaError, match="last message must be a non-empty user message"):
        example_from_messages([{"role": "assistant", "content": "x"}])


def test_evaluate_through_rqa_serve_gives_the_hf_answers(server, key, tmp_path):
    local = evaluate(server, tmp_path / "hf", "--metrics", "token-f1")
    remote = evaluate(server, tmp_path / "openai", "--metrics", "token-f1", "--generator", openai_spec(server))

    assert [row["question"] for row in remote] == questions()
    assert all(row["generated_answer"] for row in local)
    assert [row["generated_answer"] for row in remote] == [row["generated_answer"] for row in local]
    assert [row["retrieved_docs"] for row in remote] == [row["retrieved_docs"] for row in local]
    metrics = json.loads((tmp_path / "openai" / "metrics.json").read_text())
    assert metrics["count/questions"] == len(local) and "gen/f1" in metrics


def test_ask_takes_a_generator_and_answers_as_evaluate_does(server, key):
    data = server.data
    args = [
        "ask",
        questions()[0],
        *("--documents", str(data / "documents.jsonl"), "--index", str(data / "index")),
        *("--max_new_tokens", str(MAX_NEW_TOKENS), "--top_k", "2", "--generator", openai_spec(server), "--json"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    reply = json.loads(result.stdout[result.stdout.index("{") :])
    served = build_generator(openai_spec(server))
    assert served.is_rqa_server() and served.model == "rqa-embedded"
    assert reply["answer"] and len(reply["sources"]) == 2


def test_openai_backend_chat_and_contract(server, key):
    generator = build_generator(openai_spec(server, concurrency=2))
    assert contracts.missing("generators", generator) == []
    replies = generator.chat([[{"role": "user", "content": "Say hello."}]] * 2, max_new_tokens=4)
    assert len(replies) == 2 and replies[0] == replies[1]  # greedy


def test_a_wrong_key_is_refused_with_the_servers_message(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong")
    generator = build_generator(openai_spec(server, retries=0))
    with pytest.raises(RqaError, match="answered 401: missing or wrong API key"):
        generator.chat([[{"role": "user", "content": "hi"}]])


class FlakyEndpoint(BaseHTTPRequestHandler):
    """A chat endpoint that answers 429, then 503, then a completion: a real server, on localhost."""

    posts: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        self._send(200, {"data": [{"id": "flaky", "owned_by": "someone"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FlakyEndpoint.posts.append(len(body["messages"]))
        status = [429, 503, 200][min(len(FlakyEndpoint.posts) - 1, 2)]
        if status != 200:
            self._send(status, {"error": {"message": "busy"}}, {"Retry-After": "0"})
        else:
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": " Paris. "}}]})

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_retries_429_and_5xx_then_answers_and_sends_no_passages_to_other_servers():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FlakyEndpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    FlakyEndpoint.posts = []
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        generator = build_generator(f"openai:base_url={url},backoff=0.01,retries=3")
        example = Example("What is the capital of France?", "", ())
        assert generator.answer([example], [[]], max_new_tokens=8) == ["Paris."]
        assert FlakyEndpoint.posts == [2, 2, 2]  # system + question, three attempts
        assert generator.model == "flaky" and not generator.is_rqa_server()
    finally:
        httpd.shutdown()


def test_an_unreachable_endpoint_is_a_clear_error_after_its_retries():
    generator = build_generator(f"openai:base_url=http://127.0.0.1:{free_port()}/v1,model=m,retries=1,backoff=0")
    with pytest.raises(RqaError, match=r"127.0.0.1:\d+/v1/\w+: ConnectError"):
        generator.chat([[{"role": "user", "content": "hi"}]])


def test_hf_chat_renders_the_models_chat_template(tiny_model_dir):
    from helpers import embedded_tokenizer

    generator = build_generator(f"hf:model={tiny_model_dir}")
    conversation = [{"role": "user", "content": "Say hello."}]
    replies = generator.chat([conversation, conversation], max_new_tokens=3)
    assert len(replies) == 2 and replies[0] == replies[1] and isinstance(replies[0], str)  # greedy, one per input
    tokenizer = embedded_tokenizer()
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")  # the template's generation prompt, which the model continues
