"""``judge``: an LLM grades each answer against the gold answer and the passages on a 1-5 rubric.

The judge is any generator backend (``--judge openai:base_url=...,model=...`` on ``rqa evaluate``, or the
``RQA_JUDGE`` environment variable), so a strong hosted model can grade a small local one with the same rows
every other metric sees. The whole rubric goes in one user message: endpoints that answer from their own system
turn (``rqa serve``) still see it. A reply is parsed for ``Grade: N`` and ``Reason: ...``; one that holds no
grade is counted (``count/judge_unparsed``), logged and kept in its row, never an error.

The judge writes ``{"grade", "reason", "reply"}`` into each row as ``judge`` when it grades it, so
``predictions.jsonl`` keeps the verdicts and ``per_row`` reads them back without asking again. It costs one
request per question, so ``--metrics all`` leaves it out (``opt_in``) unless a judge is configured.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from rqa.builtin.metrics import Metric
from rqa.contracts import KeyInfo
from rqa.errors import RqaError
from rqa.hookspecs import hookimpl

log = logging.getLogger("rqa")
JUDGE_ENV = "RQA_JUDGE"
PASSAGE_CHARS = 1500  # each passage shown to the judge is cut here: grading needs the gist, not the whole page
RUBRIC = """You are grading an answer to a question about documentation.
Compare the ANSWER with the GOLD ANSWER, and check it against the PASSAGES it was given.

5: correct and complete, consistent with the gold answer and supported by the passages
4: correct, with small omissions or extra detail that does no harm
3: partly correct: some of the gold answer is there, but something important is missing or wrong
2: mostly wrong or unsupported, with a small correct part
1: wrong, irrelevant, or no answer

QUESTION:
{question}

GOLD ANSWER:
{gold}

PASSAGES:
{passages}

ANSWER:
{answer}

Reply with exactly two lines:
Grade: <1-5>
Reason: <one sentence>"""
_GRADE = re.compile(r"grade\W{0,4}([1-5])\b", re.IGNORECASE)
_LEADING = re.compile(r"^\W*([1-5])\b")
_REASON = re.compile(r"reason\s*:\s*(.+)", re.IGNORECASE | re.DOTALL)


def judge_prompt(row: Mapping[str, Any]) -> str:
    passages = "\n\n".join(
        f"[{i}] {str(d.get('page_content', ''))[:PASSAGE_CHARS]}"
        for i, d in enumerate(row.get("retrieved_docs", []), 1)
    )
    return RUBRIC.format(
        question=row["question"],
        gold=row["gold_answer"],
        passages=passages or "(none)",
        answer=row["generated_answer"] or "(no answer)",
    )


def parse_verdict(reply: str) -> dict[str, Any]:
    """``{"grade": 1-5 or None, "reason": str, "reply": str}`` from a judge's reply, whatever it looks like."""
    found = _GRADE.search(reply) or _LEADING.search(reply)
    reason = _REASON.search(reply)
    if reason:
        text = reason.group(1).strip()
    elif found:  # the reply less its grade, and the punctuation around it
        text = (reply[: found.start()] + reply[found.end() :]).strip(" *-:.\n")
    else:
        text = reply.strip()
    return {"grade": int(found.group(1)) if found else None, "reason": text, "reply": reply}


class Judge(Metric):
    """Grades rows with a generator backend; ``gen/judge`` is the mean grade over the replies that held one."""

    metadata: Mapping[str, KeyInfo] = {
        "gen/judge": KeyInfo("an LLM judge's grade of the answer, 1-5 (gold answer and passages as reference)"),
        "count/judge_unparsed": KeyInfo("judge replies that held no grade", higher_is_better=False),
    }

    def __init__(self, generator: str = "", max_new_tokens: int = 64) -> None:
        super().__init__()
        self.spec, self.max_new_tokens = generator, max_new_tokens
        self._generator: Any = None

    def update(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        super().update(rows)
        pending = [row for row in rows if not isinstance(row.get("judge"), dict)]
        if not pending:
            return
        replies = self.generator().chat(
            [[{"role": "user", "content": judge_prompt(row)}] for row in pending], self.max_new_tokens
        )
        for row, reply in zip(pending, replies, strict=True):
            row["judge"] = parse_verdict(reply)
        unparsed = sum(row["judge"]["grade"] is None for row in pending)
        if unparsed:
            log.warning("judge: %d of %d replies held no grade (kept in each row's 'judge')", unparsed, len(pending))

    def generator(self) -> Any:
        if self._generator is None:
            if not self.spec:
                raise RqaError(
                    f"the judge metric needs a generator: pass --judge openai:base_url=... or set {JUDGE_ENV}"
                )
            from rqa.backends import build_generator

            self._generator = build_generator(self.spec)
        return self._generator

    def per_row(self, row: dict[str, Any]) -> dict[str, float]:
        grade = (row.get("judge") or {}).get("grade")
        return {} if grade is None else {"gen/judge": float(grade)}

    def compute(self) -> dict[str, float]:
        grades = [row["judge"]["grade"] for row in self.rows if isinstance(row.get("judge"), dict)]
        parsed = [grade for grade in grades if grade is not None]
        scores = {"count/judge_unparsed": float(len(grades) - len(parsed))}
        if parsed:
            scores["gen/judge"] = sum(parsed) / len(parsed)
        return scores


def judge(generator: str = "", max_new_tokens: int = 64) -> Judge:
    """An LLM judge's 1-5 grade of each answer (option: generator, a backend spec; default $RQA_JUDGE)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    return Judge(generator or os.environ.get(JUDGE_ENV, ""), max_new_tokens)


judge.opt_in = True  # type: ignore[attr-defined]  # not in --metrics all: it needs a judge endpoint


def configured_judge(given: str | None) -> str:
    """The judge's generator spec: the option given, else ``$RQA_JUDGE``, else empty (no judge)."""
    return given or os.environ.get(JUDGE_ENV, "")


@hookimpl
def register_metrics(register) -> None:
    register("judge", judge)
