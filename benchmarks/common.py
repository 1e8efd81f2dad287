"""Helpers shared by the benchmark scripts: the Faire data, the embedded models, child processes, reporting.

Every script compares rqa with what a user would run instead, on the same work, in one invocation, and writes
its own section of ``BENCHMARKS.md`` so that the numbers there always come with the command that made them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rqa.data import ExampleEncoder
    from rqa.schema import Document, Example

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "faire"
CACHE_DIR = REPO_ROOT / "benchmarks" / ".cache"
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
JSON_MARKER = "BENCH_JSON "  # children print one line starting with this; libraries may print anything else
SECTION_ORDER = (
    "bench_cli",
    "bench_index",
    "bench_train:fp32",
    "bench_train:bf16",
    "bench_train:cuda-bf16",
    "bench_train:cuda-bf16-llama-1b",
    "bench_eval",
    "bench_eval:fine-tuned",
    "bench_quality",
    "bench_retriever",
    "bench_retriever:answers",
    "bench_serve",
    "bench_generate",
)

MD_HEADER = """# Benchmarks

rqa against what a user would run instead, on the same work, in one run each, reported as ratios. Each section
below is rewritten by the script named in it (see `benchmarks/README.md`); `make bench` runs them all. Numbers
are from a shared 2-core CPU machine: compare ratios within a section, not absolute times across sections.
"""


# --- data and models -------------------------------------------------------------------------------------


def train_examples(n: int | None = None) -> list[Example]:
    """The first ``n`` Faire training examples, in file order (every tool sees this exact sequence)."""
    from rqa.schema import read_examples

    examples = read_examples(DATA_DIR / "train_w_qa.jsonl")
    return examples[:n] if n else examples


def eval_examples(n: int | None = None) -> list[Example]:
    from rqa.schema import read_examples

    examples = read_examples(DATA_DIR / "eval_w_qa.jsonl")
    return examples[:n] if n else examples


def documents() -> list[Document]:
    from rqa.schema import read_documents

    return read_documents(DATA_DIR / "documents.pkl")


def generator_path() -> str:
    from rqa.models import resolve_generator

    return resolve_generator(None)


def chatml_encoder(max_seq_length: int) -> ExampleEncoder:
    """rqa's encoder with the ``chatml`` formatter, built through the plugin registry as ``rqa train`` does."""
    from rqa.data import ExampleEncoder
    from rqa.models import load_tokenizer
    from rqa.plugins import get_plugins

    tokenizer = load_tokenizer(generator_path())
    formatter = get_plugins()["formatters"].create("chatml", {}, tokenizer=tokenizer)
    return ExampleEncoder(tokenizer, formatter, max_seq_length=max_seq_length)


# --- measuring -------------------------------------------------------------------------------------------


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def wait_for_quiet(threshold: float = 2.6, max_wait: float = 180.0) -> float:
    """Wait (up to ``max_wait`` s) until the 1-minute load falls below ``threshold``; returns the seconds waited.

    The machine is shared: a test suite running beside a measurement can slow it several-fold, so each
    measured phase starts when nothing else is busy (our own 2 threads alone keep the load near 2).
    """
    began = time.perf_counter()
    while os.getloadavg()[0] > threshold and time.perf_counter() - began < max_wait:
        time.sleep(5)
    return time.perf_counter() - began


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "n/a"
    value = numerator / denominator
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.2g}×"


class Timer:
    """``with Timer() as t: ...; t.seconds`` — wall time with perf_counter."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


# --- child processes -------------------------------------------------------------------------------------


def emit_json(payload: dict[str, Any]) -> None:
    """A child's result: one marked line on stdout, whatever else libraries printed."""
    print(JSON_MARKER + json.dumps(payload), flush=True)


def run_child(argv: Sequence[str], timeout: float | None = None) -> dict[str, Any]:
    """Run ``python argv...`` in a fresh process (own imports, own peak RSS) and return its JSON result."""
    command = [sys.executable, *argv]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(JSON_MARKER):
            return json.loads(line[len(JSON_MARKER) :])
    tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-40:])
    raise RuntimeError(f"{shlex.join(command)} exited {completed.returncode} without a result:\n{tail}")


# --- reporting -------------------------------------------------------------------------------------------


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console = Console()
    if not console.is_terminal:  # piped to a log: do not squeeze the columns to 80 characters
        console = Console(width=200)
    console.print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub table; a ``|`` inside a cell (a metric name such as ``gen/f1|retrieval_hit``) is escaped."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    lines = [line(columns), "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    return "\n".join(lines + [line(row) for row in rows])


def environment_line() -> str:
    """Versions and machine, so a section says where its numbers came from."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for package in ("torch", "transformers", "trl", "sentence-transformers", "faiss-cpu"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    cpu = f"{cpu_name()} ({cpu_flags()})"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; " + ", ".join(parts)


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")  # what fp32/bf16 speed hangs on


def cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of /proc/cpuinfo (None where there is no such file or field)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), None)


def cpu_flags() -> str:
    """The CPU's vector extensions that decide its fp32 and bf16 speed: machines of one name differ in them."""
    flags = cpuinfo_field("flags")
    if flags is None:
        return "flags unknown"
    present = set(flags.split())
    return "flags: " + (
        " ".join(flag for flag in VECTOR_FLAGS if flag in present) or "none of " + "/".join(VECTOR_FLAGS)
    )


def cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def invocation() -> str:
    """The command that produced a section, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(REPO_ROOT)
    except ValueError:
        shown = script
    return shlex.join([".venv/bin/python", str(shown), *sys.argv[1:]])


def section_preamble(load_before: str, accelerator: str = "") -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{accelerator} with {environment_line()}" if accelerator else environment_line()
    return (
        f"Command: `{invocation()}`  \n"
        f"Run {stamp} on {machine}.  \n"
        f"Load average (1/5/15 min) before: {load_before}; after: {load_average()}."
    )


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->``, creating what is missing."""
    text = path.read_text(encoding="utf-8") if path.exists() else MD_HEADER
    for section in SECTION_ORDER:  # placeholders keep the sections in a stable order
        if f"<!-- {section}:start -->" not in text:
            text = text.rstrip("\n") + f"\n\n<!-- {section}:start -->\n_not run yet_\n<!-- {section}:end -->\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text, encoding="utf-8")
