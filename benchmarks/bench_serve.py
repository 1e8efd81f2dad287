"""Serving: ``rqa serve`` under 1, 4 and 16 concurrent clients against a one-at-a-time loop, and
``rqa evaluate`` through the ``openai`` backend (pointed at ``rqa serve``) against the local ``hf`` backend.

Every side answers the same Faire eval questions with the embedded generator, the same retriever (dense-faiss,
top 4, the index cached under ``benchmarks/.cache/``), the same prompts and greedy decoding. The loop is what a
user writes without a server: retrieve one question, ``generate`` one prompt, next. The server batches the
requests that wait together. Greedy answers must be the same everywhere; mismatches are counted.

    .venv/bin/python benchmarks/bench_serve.py                  # 16 questions, 32 new tokens
    .venv/bin/python benchmarks/bench_serve.py --questions 8 --max_new_tokens 16
    .venv/bin/python benchmarks/bench_serve.py --documents example/documents.jsonl --data example/eval_w_qa.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    CACHE_DIR,
    DATA_DIR,
    REPO_ROOT,
    Timer,
    load_average,
    markdown_table,
    print_table,
    ratio,
    section_preamble,
    wait_for_quiet,
    write_section,
)

RQA = Path(sys.executable).parent / "rqa"
LEVELS = (1, 4, 16)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def index_dir(documents: Path) -> Path:
    """The dense-faiss index of ``documents``, cached between runs (Faire's is the one bench_eval uses)."""
    return CACHE_DIR / ("index-dense-faiss" if documents == DATA_DIR / "documents.pkl" else f"index-{documents.stem}")


def start_server(port: int, max_new_tokens: int, log: Path, documents: Path) -> subprocess.Popen[str]:
    import httpx

    command = [
        str(RQA),
        "serve",
        *("--documents", str(documents), "--index", str(index_dir(documents))),
        *("--port", str(port), "--max_new_tokens", str(max_new_tokens), "--max_queue", "256"),
    ]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    deadline = time.monotonic() + 900  # the first run builds the index
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rqa serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("rqa serve did not start")


def load_level(url: str, questions: list[str], clients: int, max_new_tokens: int) -> dict[str, Any]:
    """Every question once, ``clients`` at a time; requests/s over the whole run and each request's latency."""
    import httpx

    def ask(question: str) -> tuple[float, str]:
        began = time.perf_counter()
        response = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": question}], "max_tokens": max_new_tokens},
            timeout=1800,
        )
        response.raise_for_status()
        return time.perf_counter() - began, response.json()["choices"][0]["message"]["content"]

    with Timer() as timer, ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(ask, questions))
    latencies = [seconds for seconds, _ in results]
    return {
        "rps": len(questions) / timer.seconds,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "answers": [answer for _, answer in results],
    }


def one_at_a_time(questions: list[str], max_new_tokens: int, documents: Path) -> dict[str, Any]:
    """The loop without a server: retrieve, build the prompt and generate, one question after another."""
    from rqa.assistant import Assistant, resolve_settings

    assistant = Assistant.load(
        resolve_settings(None, documents=str(documents), index=str(index_dir(documents)), max_new_tokens=max_new_tokens)
    )
    assistant.reply(questions[0])  # warm-up, as the server's first request is not timed either
    latencies, answers = [], []
    with Timer() as timer:
        for question in questions:
            with Timer() as one:
                answers.append(assistant.reply(question).answer)
            latencies.append(one.seconds)
    return {
        "rps": len(questions) / timer.seconds,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "answers": answers,
    }


def evaluate(
    output: Path, data: Path, documents: Path, limit: int, max_new_tokens: int, *extra: str
) -> tuple[float, list[str]]:
    command = [
        str(RQA),
        "evaluate",
        *("--data", str(data), "--documents", str(documents)),
        *("--index", str(index_dir(documents)), "--limit", str(limit), "--max_new_tokens", str(max_new_tokens)),
        *("--metrics", "token-f1", "--batch_size", "16", "--output_dir", str(output), *extra),
    ]
    with Timer() as timer:
        subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    return timer.seconds, [row["generated_answer"] for row in rows]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--documents", type=Path, default=DATA_DIR / "documents.pkl", help="document database")
    parser.add_argument("--data", type=Path, default=DATA_DIR / "eval_w_qa.jsonl", help="QA file of the questions")
    parser.add_argument("--no_write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    load_before = load_average()
    from rqa.schema import read_examples

    documents, data = args.documents.resolve(), args.data.resolve()
    questions = [example.question for example in read_examples(data)[: args.questions]]
    url = f"http://127.0.0.1:{args.port}"
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = start_server(args.port, args.max_new_tokens, work / "serve.log", documents)
    try:
        load_level(url, questions[:1], 1, args.max_new_tokens)  # warm-up
        levels = {}
        for clients in LEVELS:
            wait_for_quiet()
            levels[clients] = load_level(url, questions, clients, args.max_new_tokens)
        wait_for_quiet()
        backend = f"openai:base_url={url}/v1"
        served_s, served = evaluate(
            work / "openai", data, documents, len(questions), args.max_new_tokens, "--generator", backend
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=300)
    wait_for_quiet()
    local_s, local = evaluate(work / "hf", data, documents, len(questions), args.max_new_tokens)
    wait_for_quiet()
    loop = one_at_a_time(questions, args.max_new_tokens, documents)

    reference = loop["answers"]
    columns = ["", "requests/s", "p50 latency (s)", "p95 latency (s)", "vs loop", "answers ≠ loop"]
    rows = [["one-at-a-time loop", f"{loop['rps']:.2f}", f"{loop['p50']:.1f}", f"{loop['p95']:.1f}", "1.00×", "–"]]
    for clients, level in levels.items():
        differ = sum(a != b for a, b in zip(level["answers"], reference, strict=True))
        rows.append(
            [
                f"rqa serve, {clients} client{'s' if clients > 1 else ''}",
                f"{level['rps']:.2f}",
                f"{level['p50']:.1f}",
                f"{level['p95']:.1f}",
                ratio(level["rps"], loop["rps"]),
                str(differ),
            ]
        )
    same = sum(a == b for a, b in zip(served, local, strict=True))
    evaluation = [
        ["rqa evaluate (hf)", f"{local_s:.1f}", "1.00×", "–"],
        [
            "rqa evaluate --generator openai → rqa serve",
            f"{served_s:.1f}",
            ratio(served_s, local_s),
            f"{same}/{len(local)}",
        ],
    ]
    print_table("rqa serve vs a one-at-a-time loop", columns, rows)
    eval_columns = ["", "wall time (s)", "time ratio", "same answers"]
    print_table("rqa evaluate: openai backend vs hf", eval_columns, evaluation)
    if not args.no_write:
        body = (
            f"## Serving (`rqa serve`)\n\n{section_preamble(load_before)}\n\n"
            f"{len(questions)} questions of `{shown(data)}` over "
            f"`{shown(documents)}`, {args.max_new_tokens} new tokens, embedded SmolLM2-135M, "
            "dense-faiss top 4. Each client sends its next question when its last is answered; the loop "
            "retrieves and generates one question at a time in one process. Latency includes retrieval and HTTP.\n\n"
            f"{markdown_table(columns, rows)}\n\n"
            "`rqa evaluate` over the same questions, as a subprocess each (model and index loading included):\n\n"
            f"{markdown_table(eval_columns, evaluation)}\n"
        )
        write_section("bench_serve", body)
    print(json.dumps({"levels": {k: {m: v for m, v in lv.items() if m != "answers"} for k, lv in levels.items()}}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(sys.argv[1:]))
