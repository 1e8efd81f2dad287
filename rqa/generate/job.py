"""``rqa generate`` from settings to files: check everything cheap first, then load, continue the log, write.

Names, options, prompt files, the filters and the database are all checked before a model loads; the generator is
built only if the work log leaves something to do, so rerunning a finished command rewrites its files in seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rqa.generate.filters import apply_passage_filters, choose_filters
from rqa.generate.output import rows_bar, summary, summary_table, write_splits, write_summary
from rqa.generate.plan import SPLITS, GenerateSettings, make_plan
from rqa.generate.prompting import load_prompts
from rqa.generate.run import Job, State, has_work, replay, run_batches
from rqa.generate.worklog import WorkLog

log = logging.getLogger("rqa")
LOG_EVERY_S = 30.0


def question_encoder(retriever: Any, embedding_model: str | None) -> Callable[[Sequence[str]], Any]:
    """Normalised question embeddings for the near-duplicate check: the retriever's own encoder when it has one
    (no second model in memory), else the embedding model, loaded once."""
    if callable(getattr(retriever, "encode", None)) and getattr(retriever, "normalize", True):
        return lambda texts: retriever.encode(list(texts))
    from sentence_transformers import SentenceTransformer

    from rqa.models import resolve_embedder

    model = SentenceTransformer(resolve_embedder(embedding_model))
    return lambda texts: model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)


def run_generate(settings: GenerateSettings, console: Any) -> dict[str, str]:
    """Generate (or finish generating) the data set; returns the files written, by name."""
    from rqa.backends import choose_generator
    from rqa.pipeline import build_retriever, choose
    from rqa.provenance import plugin_versions
    from rqa.schema import fingerprint_documents, read_documents

    settings.check()
    filters = choose_filters(settings.filters)
    prompts = load_prompts(settings.question_prompt, settings.answer_prompt)
    generator_choice = choose_generator(settings.generator, settings.generator_options)
    retriever_choice = choose("retrievers", settings.retriever, settings.retriever_options)
    documents = read_documents(settings.documents)
    candidates, passage_filters = apply_passage_filters(documents, filters)
    plan = make_plan(candidates, settings.targets(), settings.seed)
    fingerprint = settings.fingerprint(fingerprint_documents(documents), [prompts.question, prompts.answer])
    header = {"kind": "rqa generate work log", "fingerprint": fingerprint, "settings": settings.to_dict()}
    output_dir = Path(settings.output_dir)
    total = sum(plan.targets.values())

    with WorkLog.open(output_dir, header) as worklog:
        retriever = build_retriever(
            retriever_choice, documents, settings.index, embedding_model=settings.embedding_model
        )
        state = State(targets=plan.targets)
        job = Job(
            settings,
            documents,
            plan,
            prompts,
            filters,
            None,
            retriever,
            question_encoder(retriever, settings.embedding_model),
        )
        replay(job, worklog.records, state)
        done = sum(state.counts.values())
        if worklog.records:
            log.info("continuing from %s: %d passages and %d rows done", worklog.path, len(worklog.records), done)
        if has_work(job, state):
            job.generator = generator_choice.build()
            began, last_line = time.perf_counter(), [time.perf_counter()]

            def append(record: dict[str, Any]) -> None:
                worklog.append(record)
                worklog.records.append(record)

            with rows_bar(total, done, settings.quiet) as advance:

                def step(count: int) -> None:
                    advance(count)
                    if time.perf_counter() - last_line[0] >= LOG_EVERY_S:
                        last_line[0] = time.perf_counter()
                        log.info("rqa generate: %s", _progress_line(state, began, done))

                run_batches(job, state, append, step)
            log.info("rqa generate: %s", _progress_line(state, began, done))
        records = list(worklog.records)

    files = write_splits(output_dir, documents, records, plan.targets)
    for split in SPLITS:
        if state.counts[split] < plan.targets[split]:
            log.warning(
                "%s: %d rows of the %d asked for; the passages ran out (%d could be asked about): "
                "lower the targets, raise --questions_per_passage or loosen --filter",
                split,
                state.counts[split],
                plan.targets[split],
                len(plan.order),
            )
    extra = {
        "settings": settings.to_dict(),
        "generator": {"name": generator_choice.name, "options": generator_choice.options},
        "retriever": {"name": retriever_choice.name, "options": retriever_choice.options},
        "prompts": {
            "question": {"source": prompts.question_source, "text": prompts.question},
            "answer": {"source": prompts.answer_source, "text": prompts.answer},
        },
        "documents": {
            "path": settings.documents,
            "count": len(documents),
            "fingerprint": fingerprint_documents(documents),
            "askable": len(plan.order),
        },
        "passages_used": sum(1 for record in records if record["rows"]),
        "work_log": str(output_dir / "generation-log.jsonl"),
        **plugin_versions([generator_choice, retriever_choice]),
    }
    data = summary(state, passage_filters, files, extra)
    files["summary"] = str(write_summary(output_dir, data))
    console.print(summary_table(data))
    return files


def _progress_line(state: State, began: float, done_before: int) -> str:
    kept = sum(state.counts.values())
    minutes = (time.perf_counter() - began) / 60
    rate = (kept - done_before) / minutes if minutes > 0 else 0.0
    splits = ", ".join(f"{split} {state.counts[split]}/{state.targets[split]}" for split in SPLITS)
    return f"{kept} rows ({splits}), {rate:.1f} rows/min"
