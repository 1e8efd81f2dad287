"""What ``rqa generate`` leaves behind: the split files, ``generation.json``, the summary table and the progress bar.

Split files follow LocalRQA's layout: ``{split}_w_q.jsonl`` holds one record per gold passage with its
``questions`` (the input of LocalRQA's answer step), ``{split}_w_qa.jsonl`` one row per question with its
``gold_answer``, ``gold_docs``, ``hard_neg_docs`` and an empty ``chat_history``: the files every rqa command reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from rqa.files import write_json_atomic, write_text_atomic
from rqa.generate.filters import REASONS
from rqa.generate.plan import SPLITS
from rqa.progress import Advance, TimeLeftColumn, average_rate, draws_bars
from rqa.schema import Document


def split_rows(documents: list[Document], records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows per split in plan order (``*_w_qa``), from the work log's records."""
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for record in records:
        gold = [documents[record["passage"]].to_dict()]
        negatives = [documents[i].to_dict() for i in record["negatives"]]
        for row in record["rows"]:
            rows[record["split"]].append(
                {
                    "question": row["question"],
                    "gold_answer": row["answer"],
                    "gold_docs": gold,
                    "hard_neg_docs": negatives,
                    "chat_history": [],
                }
            )
    return rows


def passage_rows(documents: list[Document], records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One record per gold passage with its kept questions (``*_w_q``), as LocalRQA's question step writes."""
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for record in records:
        if record["rows"]:
            rows[record["split"]].append(
                {
                    "gold_docs": [documents[record["passage"]].to_dict()],
                    "hard_neg_docs": [documents[i].to_dict() for i in record["negatives"]],
                    "chat_history": [],
                    "questions": [row["question"] for row in record["rows"]],
                }
            )
    return rows


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


def write_splits(
    output_dir: Path, documents: list[Document], records: list[dict[str, Any]], targets: dict[str, int]
) -> dict[str, str]:
    """Each split that has a target, as ``*_w_q.jsonl`` and ``*_w_qa.jsonl``, written atomically; their paths."""
    files: dict[str, str] = {}
    flat, grouped = split_rows(documents, records), passage_rows(documents, records)
    for split in SPLITS:
        if not targets.get(split):
            continue
        for suffix, rows in (("w_q", grouped[split]), ("w_qa", flat[split])):
            path = output_dir / f"{split}_{suffix}.jsonl"
            write_text_atomic(path, _jsonl(rows))
            files[f"{split}_{suffix}"] = str(path)
    return files


def filter_counts(removed: dict[str, int], asked: int) -> dict[str, dict[str, Any]]:
    """Every reason with how many questions it removed and their share of the questions asked for."""
    return {
        reason: {
            "removed": removed.get(reason, 0),
            "share": round(removed.get(reason, 0) / asked, 4) if asked else 0.0,
            "means": means,
        }
        for reason, means in REASONS.items()
    }


def summary(
    state: Any, passage_filters: dict[str, dict[str, Any]], files: dict[str, str], extra: dict[str, Any]
) -> dict[str, Any]:
    """The body of ``generation.json``: settings and prompts (in ``extra``), counts, filters (``passage_filters``
    from ``apply_passage_filters``), rate and files."""
    rows = sum(state.counts.values())
    minutes = state.seconds / 60
    return {
        **extra,
        "rows": dict(state.counts),
        "targets": dict(state.targets),
        "questions_asked": state.asked,
        "filters": filter_counts(state.removed, state.asked),
        "passage_filters": passage_filters,
        "surplus": state.surplus,
        "generation_seconds": round(state.seconds, 2),
        "rows_per_minute": round(rows / minutes, 2) if minutes > 0 else None,
        "files": files,
    }


def write_summary(output_dir: Path, data: dict[str, Any]) -> Path:
    path = output_dir / "generation.json"
    write_json_atomic(path, data)
    return path


def summary_table(data: dict[str, Any]) -> Table:
    """What each filter removed, as a share of the questions asked for, then the rows per split."""
    table = Table(title=f"rqa generate: {data['questions_asked']} questions asked for", title_justify="left")
    table.add_column("removed by")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    table.add_column("meaning", overflow="fold")
    for reason, info in data["filters"].items():
        table.add_row(reason, str(info["removed"]), f"{info['share']:.1%}", info["means"])
    for reason, info in data["passage_filters"].items():
        if info["removed"]:
            table.add_row(f"passage: {reason}", str(info["removed"]), "", info["means"])
    kept = ", ".join(f"{split} {data['rows'][split]}/{data['targets'][split]}" for split in SPLITS)
    rate = data["rows_per_minute"]
    table.caption = f"kept: {kept}; {rate if rate is not None else '?'} rows/min"
    table.caption_justify = "left"
    return table


class PerMinuteColumn(ProgressColumn):
    """Rows per minute so far: generation is slow enough that a per-second rate reads as 0.1."""

    def render(self, task: Task) -> Text:
        rate = average_rate(task)
        shown = "?" if rate is None else f"{rate * 60:.1f}"
        return Text(f"{shown} rows/min", style="progress.data.speed")


@contextmanager
def rows_bar(total: int, done: int, quiet: bool = False) -> Iterator[Advance]:
    """A bar of rows kept (rows/min, time left) where someone watches; otherwise a function that does nothing."""
    if not draws_bars(quiet):
        yield lambda count: None
        return
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        PerMinuteColumn(),
        TimeLeftColumn(),
        transient=True,
        refresh_per_second=2,
    )
    progress.start()
    # the rate counts this run's rows only: the bar starts at the rows found in the work log
    label = f"generating rows ({done} in the work log)" if done else "generating rows"
    task = progress.add_task(label, total=max(total - done, 0), updated=None)
    try:
        yield lambda count: progress.update(task, advance=count, updated=progress.get_time())
    finally:
        progress.stop()
