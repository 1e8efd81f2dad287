"""The server's batching engine: requests waiting together are retrieved for and generated as one batch.

One worker thread owns the model. It takes the first waiting request, collects more for up to ``wait_s`` (at most
``batch_size``), retrieves passages for those that brought none in one retriever call, builds each prompt exactly
as training does (``Assistant.prompt_ids``: the run's formatter, ``max_seq_length`` trimming) and answers them
with ``generate_answers``, the batched greedy path of evaluation, grouped by ``max_tokens``. A greedy answer
therefore equals the one ``rqa evaluate`` or ``rqa ask`` gives for the same passages. A streaming job hears its
answer's text after every decoding step (``partial_text``), so its client sees tokens as the batch makes them.

Requests are ``Job``s whose result arrives on the event loop that submitted them. A job whose client went away
is marked ``cancelled``: it is skipped if its batch has not started and leaves a running batch at the next
decode segment. More than ``max_queue`` waiting jobs is ``QueueFull`` (the app answers 503).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rqa.errors import RqaError
from rqa.generation import answer_text, stop_token_ids
from rqa.schema import Document, Example

log = logging.getLogger("rqa")
Hit = tuple[Document, float | None]  # score None: a passage the client sent


class QueueFull(RqaError):
    """More requests are waiting than ``--max_queue`` allows."""


class PromptTooLong(RqaError):
    """A request that cannot fit the model's context, whatever is trimmed."""


@dataclass
class Job:
    """One chat completion request on its way through the worker."""

    example: Example
    passages: list[Document] | None  # sent by the client; None: retrieve for the question
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Job]
    cancelled: bool = False
    hits: list[Hit] = field(default_factory=list)
    prompt_tokens: int = 0
    answer: str = ""
    completion_tokens: int = 0
    deltas: asyncio.Queue[str] | None = None  # streaming: the answer's new text, as it is generated
    streamed: str = ""  # the text handed to ``deltas`` so far: always a beginning of the final answer


class BatchingEngine:
    """Owns the assistant's model in one worker thread and answers jobs in batches."""

    def __init__(
        self, assistant: Any, batch_size: int = 16, wait_s: float = 0.01, max_queue: int = 64, name: str = "rqa"
    ) -> None:
        self.assistant, self.batch_size, self.wait_s, self.max_queue = assistant, batch_size, wait_s, max_queue
        self.name = name
        self.tokenizer = assistant.encoder.tokenizer
        self.tokenizer_lock = threading.Lock()  # a fast tokenizer must not be used from two threads at once
        config = getattr(assistant.model, "config", None)
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 0) or None
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches = 0  # how many batches ran, and their sizes: for /health and the load tests
        self.largest_batch = 0
        self.cancelled = 0  # jobs whose client went away before their answer was sent

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rqa-serve-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish every job already queued, then end the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    # --- requests -------------------------------------------------------------------------------------------

    def check_fits(self, example: Example, max_new_tokens: int) -> int:
        """The question's own token count; ``PromptTooLong`` when even the question alone cannot fit.

        Passages and history are trimmed to ``max_seq_length`` as in training, so only the question (with the
        format's fixed text) and the answer's room can make a request impossible.
        """
        encoder = self.assistant.encoder
        alone = Example(question=example.question, gold_answer="", gold_docs=())
        with self.tokenizer_lock:
            tokens = len(encoder.tokenize(encoder.formatter.render(alone, [], with_answer=False))[0])
        if tokens > encoder.max_seq_length:
            raise PromptTooLong(
                f"the question alone is {tokens} tokens; this model's prompts hold {encoder.max_seq_length} "
                "(--max_seq_length)"
            )
        if self.max_positions is not None and tokens + max_new_tokens > self.max_positions:
            raise PromptTooLong(
                f"the question ({tokens} tokens) and max_tokens ({max_new_tokens}) exceed the model's context of "
                f"{self.max_positions} tokens"
            )
        return tokens

    def submit(
        self, example: Example, passages: list[Document] | None, max_new_tokens: int, stream: bool = False
    ) -> Job:
        """Queue a job; its ``future`` resolves to the job itself, answered (or to the error that stopped it).

        ``stream``: the job's ``deltas`` queue receives the answer's text as it grows.
        """
        if self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are waiting (--max_queue {self.max_queue}); retry later")
        loop = asyncio.get_running_loop()
        job = Job(example, passages, max_new_tokens, loop, loop.create_future())
        if stream:
            job.deltas = asyncio.Queue()
        self._queue.put(job)
        return job

    # --- the worker -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.batch_size:
                try:
                    job = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0001))
                except queue.Empty:
                    break
                if job is None:  # stop once this batch is answered (jobs queued before the stop are in it)
                    stopping = True
                    break
                batch.append(job)
            self._answer(batch)

    def _answer(self, batch: list[Job]) -> None:
        live = [job for job in batch if not job.cancelled]
        try:
            if live:
                self._retrieve(live)
                self._generate(live)
            self.cancelled += sum(job.cancelled for job in batch)
            for job in batch:
                _resolve(job, None)
        except Exception as error:  # the server keeps running: each request of the batch gets the error
            log.exception("serve: a batch of %d failed", len(live))
            for job in batch:
                _resolve(job, error)

    def _retrieve(self, jobs: list[Job]) -> None:
        needed = [job for job in jobs if job.passages is None]
        if needed:
            found = self.assistant.retriever.retrieve([job.example.question for job in needed], self.assistant.top_k)
            for job, hits in zip(needed, found, strict=True):
                job.hits = list(hits)
        for job in jobs:
            if job.passages is not None:
                job.hits = [(document, None) for document in job.passages]

    def _generate(self, jobs: list[Job]) -> None:
        from rqa.generation import generate_answers

        with self.tokenizer_lock:
            prompts = [
                self.assistant.prompt_ids(job.example.question, job.example.chat_history, [d for d, _ in job.hits])
                for job in jobs
            ]
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        for max_new_tokens in sorted({job.max_new_tokens for job in jobs}):
            group = [i for i, job in enumerate(jobs) if job.max_new_tokens == max_new_tokens]
            answers, _ = generate_answers(
                self.assistant.model,
                self.tokenizer,
                [prompts[i] for i in group],
                end_of_turn=self.assistant.encoder.formatter.end_of_turn,
                max_new_tokens=max_new_tokens,
                batch_size=len(group),
                cancelled=lambda index, members=group: jobs[members[index]].cancelled,
                on_tokens=self._streamer([jobs[i] for i in group]),
            )
            for index, answer in zip(group, answers, strict=True):
                jobs[index].prompt_tokens, jobs[index].answer = len(prompts[index]), answer
        with self.tokenizer_lock:
            for job in jobs:
                job.completion_tokens = len(self.tokenizer(job.answer, add_special_tokens=False)["input_ids"])

    def _streamer(self, jobs: list[Job]) -> Any:
        """``generate_answers``' token listener for the streaming jobs among ``jobs``; None when none streams."""
        if not any(job.deltas is not None for job in jobs):
            return None
        end_of_turn = self.assistant.encoder.formatter.end_of_turn
        stop_ids = set(stop_token_ids(self.tokenizer, end_of_turn)[0])

        def hear(index: int, new_ids: list[int]) -> None:
            job = jobs[index]
            if job.deltas is None or job.cancelled:
                return
            with self.tokenizer_lock:
                text = partial_text(self.tokenizer, new_ids, end_of_turn, stop_ids)
            if len(text) > len(job.streamed) and text.startswith(job.streamed):
                delta, job.streamed = text[len(job.streamed) :], text
                job.loop.call_soon_threadsafe(job.deltas.put_nowait, delta)

        return hear


def partial_text(tokenizer: Any, new_ids: list[int], end_of_turn: str, stop_ids: set[int]) -> str:
    """The part of an unfinished answer that the finished one is sure to begin with.

    The answer's text as ``answer_text`` would give it, less what may still change: a trailing incomplete
    character (``\ufffd``), trailing space (the final answer is stripped), and an ending that could be the start
    of the end-of-turn text.
    """
    cut = next((i for i, token in enumerate(new_ids) if token in stop_ids), len(new_ids))
    text = answer_text(tokenizer, new_ids[:cut], end_of_turn).rstrip("\ufffd").rstrip()
    for size in range(min(len(end_of_turn), len(text)), 0, -1):
        if text.endswith(end_of_turn[:size]):
            return text[:-size].rstrip()
    return text


def _resolve(job: Job, error: BaseException | None) -> None:
    """Hand the result to the job's event loop (futures are not thread-safe)."""

    def settle() -> None:
        if job.future.done():
            return
        if error is None:
            job.future.set_result(job)
        else:
            job.future.set_exception(error)

    if not job.loop.is_closed():
        job.loop.call_soon_threadsafe(settle)
