"""Built-in generator backends: ``hf`` (a local transformers model) and ``openai`` (an OpenAI-compatible endpoint).

``hf`` is the path evaluation and ``rqa ask`` have always taken (``rqa.generation.generate_answers`` over the
formatter's prompt ids), so answers do not change with the seam. ``openai`` speaks chat completions over
``httpx`` (lighter than the ``openai`` client, and all the protocol needs): requests run ``concurrency`` at a
time, 429 and 5xx answers and dropped connections are retried with exponential backoff (a ``Retry-After`` header
wins), and decoding is greedy (``temperature`` 0) unless told otherwise. The API key is read from the environment
variable that ``api_key_env`` names, never from an option's value, so it stays out of shell history and
``rqa_args.json``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rqa.backends import messages_for
from rqa.errors import RqaError
from rqa.hookspecs import hookimpl
from rqa.schema import Document, Example


class EndpointError(RqaError):
    """An endpoint answered with an error status (kept in ``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
PASSAGE_MODES = ("auto", "always", "never")


class HFGenerator:
    """A loaded causal LM, its encoder (tokenizer plus formatter) and rqa's batched greedy generation."""

    def __init__(self, model: Any, encoder: Any, batch_size: int = 8) -> None:
        self.model, self.encoder, self.batch_size = model, encoder, batch_size

    def answer(
        self, examples: Sequence[Example], passages: Sequence[Sequence[Document]], max_new_tokens: int = 128
    ) -> list[str]:
        """The prompt ids training builds (``ExampleEncoder.prompt_ids``), answered in batches."""
        prompts = [self.encoder.prompt_ids(e, list(p)) for e, p in zip(examples, passages, strict=True)]
        return self._generate(prompts, max_new_tokens)

    def chat(self, conversations: Sequence[Sequence[Mapping[str, str]]], max_new_tokens: int = 128) -> list[str]:
        """The tokenizer's chat template over the messages as given (a free-form prompt, not rqa's RAG prompt)."""
        tokenizer = self.encoder.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise RqaError("this model's tokenizer has no chat template: use the openai backend for chat prompts")
        # rendered as text, then tokenized without special tokens: the template already holds them, and the text
        # form is the same across transformers versions (tokenize=True returns a list or a BatchEncoding)
        texts = [
            tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
            for messages in conversations
        ]
        prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        return self._generate(prompts, max_new_tokens)

    def _generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        from rqa.generation import generate_answers

        answers, _ = generate_answers(
            self.model,
            self.encoder.tokenizer,
            prompts,
            end_of_turn=self.encoder.formatter.end_of_turn,
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
        )
        return answers


def hf(
    model: str | None = None,
    formatter: str = "auto",
    max_seq_length: int = 2048,
    batch_size: int = 8,
    use_flash_attention: bool = False,
) -> HFGenerator:
    """A local transformers model with rqa's batched greedy decoding (options: model, formatter, batch_size)."""
    if batch_size < 1 or max_seq_length < 1:
        raise ValueError("batch_size and max_seq_length must be at least 1")
    from rqa.data import ExampleEncoder
    from rqa.models import load_generator, load_tokenizer, resolve_generator
    from rqa.pipeline import choose

    chosen = choose("formatters", formatter)  # an unknown formatter fails before the model loads
    path = resolve_generator(model)
    tokenizer = load_tokenizer(path)
    encoder = ExampleEncoder(tokenizer, chosen.build(tokenizer=tokenizer), max_seq_length=max_seq_length)
    return HFGenerator(load_generator(path, use_flash_attention=use_flash_attention), encoder, batch_size)


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible endpoint (vLLM, TGI, llama.cpp, Ollama, OpenAI, ``rqa serve``)."""

    def __init__(
        self,
        base_url: str,
        model: str = "",
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        temperature: float = 0.0,
        passages: str = "auto",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key = model, api_key
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.temperature, self.passages = temperature, passages
        self._client: Any = None
        self._lock = threading.Lock()
        self._rqa_server: bool | None = None

    # --- the contract ---------------------------------------------------------------------------------------

    def answer(
        self, examples: Sequence[Example], passages: Sequence[Sequence[Document]], max_new_tokens: int = 128
    ) -> list[str]:
        """Each question as chat messages; an rqa server also gets the passages, to render the run's own prompt."""
        from rqa.formatting import Formatter

        send = self.passages == "always" or (self.passages == "auto" and self.is_rqa_server())
        bodies = []
        for example, hits in zip(examples, passages, strict=True):
            body = self._body(messages_for(example, Formatter().system_text(list(hits))), max_new_tokens)
            if send:
                body["passages"] = [document.to_dict() for document in hits]
            bodies.append(body)
        return self._complete_all(bodies)

    def chat(self, conversations: Sequence[Sequence[Mapping[str, str]]], max_new_tokens: int = 128) -> list[str]:
        """The messages as given; an rqa server is told there are no passages, so it does not retrieve."""
        send = self.passages == "always" or (self.passages == "auto" and self.is_rqa_server())
        bodies = []
        for messages in conversations:
            body = self._body([dict(m) for m in messages], max_new_tokens)
            if send:
                body["passages"] = []
            bodies.append(body)
        return self._complete_all(bodies)

    # --- the protocol ---------------------------------------------------------------------------------------

    def is_rqa_server(self) -> bool:
        """Whether the endpoint is ``rqa serve`` (its ``/models`` entries are ``owned_by: rqa``); asked once."""
        if self._rqa_server is None:
            try:
                data = self._request("GET", "/models").get("data") or []
            except EndpointError as error:  # an endpoint without /models (or that hides it) is not rqa
                if error.status not in (401, 403, 404, 405):
                    raise
                data = []
            self._rqa_server = any(isinstance(m, dict) and m.get("owned_by") == "rqa" for m in data)
            if not self.model and data and isinstance(data[0], dict):
                self.model = str(data[0].get("id", ""))
        return self._rqa_server

    def _body(self, messages: list[dict[str, str]], max_new_tokens: int) -> dict[str, Any]:
        if not self.model:
            self.is_rqa_server()  # learns the served model's name
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_new_tokens,
            "temperature": self.temperature,
            "stream": False,
        }

    def _complete_all(self, bodies: list[dict[str, Any]]) -> list[str]:
        if len(bodies) <= 1 or self.concurrency <= 1:
            return [self._complete(body) for body in bodies]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            return list(pool.map(self._complete, bodies))

    def _complete(self, body: dict[str, Any]) -> str:
        data = self._request("POST", "/chat/completions", body)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RqaError(f"{self.base_url}/chat/completions answered without choices[0].message.content") from None
        return (content or "").strip()

    def _http(self) -> Any:
        import httpx

        with self._lock:
            if self._client is None:
                limits = httpx.Limits(max_connections=max(self.concurrency, 1))
                self._client = httpx.Client(timeout=self.timeout, limits=limits)
        return self._client

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call, retried on 429/5xx and connection errors with exponential backoff; errors name the endpoint."""
        import httpx

        url = f"{self.base_url}{path}"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http().request(method, url, json=body, headers=headers)
            except httpx.TransportError as error:
                if last:
                    raise RqaError(f"{url}: {type(error).__name__}: {error}") from None
                time.sleep(self.backoff * 2**attempt)
                continue
            if response.status_code in RETRY_STATUS and not last:
                time.sleep(_retry_after(response) or self.backoff * 2**attempt)
                continue
            if response.status_code >= 400:
                raise EndpointError(
                    f"{url} answered {response.status_code}: {_error_message(response)}", response.status_code
                )
            try:
                return response.json()
            except ValueError:
                raise RqaError(f"{url} answered {response.status_code} with a body that is not JSON") from None
        raise AssertionError("unreachable")


def _retry_after(response: Any) -> float | None:
    try:
        return min(float(response.headers.get("retry-after", "")), 60.0)
    except ValueError:
        return None


def _error_message(response: Any) -> str:
    try:
        error = response.json().get("error")
        return str(error.get("message") if isinstance(error, dict) else error or response.text)[:500]
    except (ValueError, AttributeError):
        return response.text[:500]


def openai(
    base_url: str,
    model: str = "",
    api_key_env: str = "",
    concurrency: int = 4,
    timeout: float = 120.0,
    retries: int = 4,
    backoff: float = 0.5,
    temperature: float = 0.0,
    passages: str = "auto",
) -> OpenAIGenerator:
    """An OpenAI-compatible chat endpoint (options: base_url, model, api_key_env, concurrency, timeout, retries)."""
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    if concurrency < 1 or retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError("concurrency must be at least 1, retries and backoff at least 0, timeout above 0")
    if passages not in PASSAGE_MODES:
        raise ValueError(f"passages must be one of {', '.join(PASSAGE_MODES)}, got {passages!r}")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"the environment variable {api_key_env} (api_key_env) is not set")
    return OpenAIGenerator(base_url, model, api_key, concurrency, timeout, retries, backoff, temperature, passages)


@hookimpl
def register_generators(register) -> None:
    register("hf", hf)
    register("openai", openai)
