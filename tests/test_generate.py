"""``rqa generate``: the command end to end through a canned generator backend (a real plugin), its filters and
their counts, splits by passage, hard negatives, resuming after ``kill -9``, and its bad-input errors."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rqa.cli import main
from rqa.generate.filters import answer_problem, choose_filters
from rqa.generate.plan import assign_splits, is_copy
from rqa.generate.prompting import fill, parse_questions
from rqa.generate.worklog import LOG_NAME, WorkLog
from rqa.schema import Document, read_examples

RQA_SCRIPT = Path(sys.executable).parent / "rqa"

# A generator that answers from the prompt it is given: questions name words of the passage, answers quote it.
# Marker words in a passage make it misbehave in one way each, so every filter has something to remove.
CANNED = '''
import re
import time

from rqa import hookimpl


class Canned:
    def __init__(self, delay):
        self.delay = delay

    def answer(self, examples, passages, max_new_tokens=128):
        return ["" for _ in examples]

    def chat(self, conversations, max_new_tokens=128):
        time.sleep(self.delay)
        return [self.reply(messages[-1]["content"]) for messages in conversations]

    def reply(self, prompt):
        passage = prompt.split("------")[1]
        words = re.findall(r"[a-z]{4,}", passage.split("Content:")[-1].lower())
        if prompt.rstrip().endswith("Answer:"):
            if "zebra" in words:
                return "The passage does not contain the answer to this question."
            if "lengthy" in words:
                return " ".join(["words"] * 300)
            return passage.split("Content:")[-1].strip().split(".")[0] + "."
        if "walrus" in words:
            return "Sure! I would be glad to help with that."
        if "password" in words:
            return "Question 1: How do I reset my password?\\nQuestion 2: How can I reset my password?"
        if "offtopic" in words:
            return "Question 1: What is the capital of France?"
        return f"Sure!\\nQuestion 1: How do I {words[1]} the {words[0]}?\\n2. What card ships with every {words[0]}?"


def canned(delay: float = 0.0):
    """Canned questions and answers made from the prompt."""
    return Canned(delay)


@hookimpl
def register_generators(register):
    register("canned", canned)
'''

NOUNS = [
    "kettle",
    "toaster",
    "bicycle",
    "lantern",
    "compass",
    "blender",
    "heater",
    "ladder",
    "mirror",
    "pillow",
    "scooter",
    "tablet",
    "umbrella",
    "violin",
    "wallet",
    "blanket",
    "candle",
    "drill",
    "easel",
    "faucet",
    "garden",
    "hammock",
    "jacket",
    "kayak",
    "locker",
    "marker",
    "needle",
    "oven",
    "printer",
    "quilt",
    "router",
    "stapler",
    "tripod",
    "vacuum",
    "whistle",
    "anchor",
    "basket",
    "cooler",
    "drawer",
    "fridge",
    "grater",
    "helmet",
    "iron",
    "juicer",
]
VERBS = ["descale", "polish", "assemble", "charge", "calibrate", "rinse", "mount", "fold", "clean", "wash"]


def documents() -> list[dict]:
    """Passages on distinct things, a few misbehaving by marker, short stubs and repeated navigation text."""
    docs = []
    for i, noun in enumerate(NOUNS):
        verb = VERBS[i % len(VERBS)]
        marker = {1: " zebra", 3: " walrus", 5: " lengthy", 7: " password", 8: " offtopic"}.get(i % 9, "")
        text = (
            f"{noun} {verb} guide. To {verb} the {noun}, follow the steps in the manual{marker}. "
            f"Every {noun} ships with a card that explains how often to {verb} it and which parts to check first."
        )
        docs.append({"page_content": text, "fmt_content": f"Title: {noun}\nContent: {text}", "metadata": {"i": i}})
    docs += [{"page_content": stub, "metadata": {}} for stub in ("Home", "Contact us", "Shop by brand today")]
    navigation = [
        "Sign in to your account to see wholesale prices and place orders with brands",
        "Browse brands by category and discover new products from independent makers every day",
        "Contact our support team at any time of day by chat or by email for help",
    ]
    docs += [{"page_content": "\n".join([*navigation, f"Page {n}"]), "metadata": {}} for n in range(4)]
    return docs


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An installed-looking plugin distribution registering the ``canned`` generator, importable here and by
    the ``rqa`` processes the tests start (``PYTHONPATH``)."""
    from rqa.plugins import get_plugins

    root = tmp_path_factory.mktemp("site")
    (root / "rqa_canned_generator.py").write_text(CANNED)
    dist_info = root / "rqa_canned_generator-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rqa-canned-generator\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[rqa]\ncanned = rqa_canned_generator\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        get_plugins.cache_clear()
        yield root
    sys.modules.pop("rqa_canned_generator", None)
    get_plugins.cache_clear()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in documents()))
    return path


FILTERS = ("--filter", "short,boilerplate", "--filter", "roundtrip")


@pytest.fixture(scope="module")
def generated(site: Path, database: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One whole run, uninterrupted: its output folder and what it printed."""
    out = tmp_path_factory.mktemp("generated") / "data"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_main(args(database, out, *FILTERS))
    return out, printed.getvalue()


def args(database: Path, output: Path, *extra: str) -> list[str]:
    return [
        "generate",
        *("--documents", str(database), "--output_dir", str(output), "--generator", "canned"),
        *("--num_train", "16", "--num_eval_test", "8", "--batch_size", "3", "--quiet"),
        *extra,
    ]


def run_main(argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as stop:
        assert not stop.code, stop.code


def test_generates_split_filtered_rows_that_rqa_reads(generated):
    out, printed = generated
    assert "rows/min" in printed and "unanswerable" in printed
    splits = {split: read_examples(out / f"{split}_w_qa.jsonl") for split in ("train", "eval", "test")}
    assert {split: len(rows) for split, rows in splits.items()} == {"train": 16, "eval": 4, "test": 4}
    golds = {split: {e.gold_docs[0].page_content for e in rows} for split, rows in splits.items()}
    assert sum(len(g) for g in golds.values()) == len(set.union(*golds.values()))  # no passage in two splits
    for rows in splits.values():
        for example in rows:
            assert len(example.hard_neg_docs) == 2
            assert not any(is_copy(negative, example.gold_docs[0]) for negative in example.hard_neg_docs)
            assert example.question.endswith("?") and example.gold_answer
    questions = [e.question.lower() for rows in splits.values() for e in rows]
    assert len(questions) == len(set(questions))

    grouped = [json.loads(line) for line in (out / "train_w_q.jsonl").read_text().splitlines()]
    assert sum(len(record["questions"]) for record in grouped) == 16 and all(r["gold_docs"] for r in grouped)

    summary = json.loads((out / "generation.json").read_text())
    assert summary["generator"]["name"] == "canned" and summary["rows"] == {"train": 16, "eval": 4, "test": 4}
    providers = {c["name"]: c for c in summary["resolved_components"]}  # which plugin and version made the rows
    assert providers["canned"]["version"] and providers["dense-faiss"]["package"] == "rqa" and summary["rqa_version"]
    assert "{passage}" in summary["prompts"]["question"]["text"] and summary["prompts"]["answer"]["source"] == "default"
    assert summary["settings"]["filters"] == ["short,boilerplate", "roundtrip"]
    removed = {reason: info["removed"] for reason, info in summary["filters"].items()}
    for reason in ("no_question", "duplicate_text", "duplicate_embedding", "roundtrip", "unanswerable"):
        assert removed[reason] >= 1, (reason, removed)
    assert summary["passage_filters"]["short"]["removed"] == 3
    assert summary["passage_filters"]["boilerplate"]["removed"] == 4
    assert summary["questions_asked"] == 24 + sum(removed.values()) + summary["surplus"]
    assert summary["rows_per_minute"] > 0


def test_kill_9_and_the_same_command_continues_without_duplicates_or_gaps(generated, site, database, tmp_path):
    whole, _ = generated
    stopped = tmp_path / "stopped"
    argv = [str(RQA_SCRIPT), *args(database, stopped, *FILTERS, "--generator_option", "delay=0.2")]
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("RQA_LOAD_PLUGINS", None)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = stopped / "generation-log.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 4:  # the header and at least three passages
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (stopped / "train_w_qa.jsonl").exists()
    done_before = len(log.read_text().splitlines()) - 1

    finished = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "continuing from" in finished.stdout + finished.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    positions = [record["position"] for record in records]
    assert len(positions) == len(set(positions)) and len(records) > done_before
    for split in ("train", "eval", "test"):
        assert (stopped / f"{split}_w_qa.jsonl").read_text() == (whole / f"{split}_w_qa.jsonl").read_text()


def test_a_work_log_of_other_settings_is_refused(generated, database, tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    shutil.copy(generated[0] / "generation-log.jsonl", out)
    with pytest.raises(SystemExit):
        main(args(database, out, *FILTERS, "--seed", "7"))
    error = capsys.readouterr().err
    assert "other settings" in error and "seed" in error


def test_bad_input_fails_clearly_before_anything_loads(site, database, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_passage = tmp_path / "question.txt"
    no_passage.write_text("Write {num_questions} questions.")
    cases = [
        (args(empty, tmp_path / "a"), "holds no documents"),
        (args(database, tmp_path / "b", "--filter", "roundtrp"), "Did you mean 'roundtrip'?"),
        (args(database, tmp_path / "c", "--question_prompt", str(no_passage)), "{passage}"),
        (args(database, tmp_path / "d", "--questions_per_passage", "0"), "--questions_per_passage"),
        (args(database, tmp_path / "e", "--generator", "nope"), "nope"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 1
        error = capsys.readouterr().err
        assert expected in error, error
    assert "Available: boilerplate, short, roundtrip;" in _error_of(lambda: choose_filters(["nonsense"]))
    assert not any((tmp_path / name).exists() for name in "abcde")


def _error_of(call) -> str:
    try:
        call()
    except Exception as error:
        return str(error)
    raise AssertionError("no error")


def test_questions_are_read_from_untidy_replies():
    reply = "Sure! Here are two questions:\nQuestion 1: **What is Showroom?**\n2) How do I shop it?\nIt is a store."
    assert parse_questions(reply, 2) == ["What is Showroom?", "How do I shop it?"]
    assert parse_questions("What is it?\nwhat is it?\nQ3: Why?", 5) == ["What is it?", "Why?"]
    assert parse_questions("No questions here.", 2) == []
    assert parse_questions("Question 1: How to ship to Canada\nQuestion 2: How to ship to Canada", 2) == [
        "How to ship to Canada"
    ]


def test_placeholders_are_filled_once_and_answers_saying_no_answer_are_caught():
    assert fill("{passage} / {question}", {"{passage}": "a {question} b", "{question}": "Q?"}) == "a {question} b / Q?"
    assert answer_problem("The passage does not mention the fee.", 200) == "unanswerable"
    assert answer_problem("I cannot answer this from the text.", 200) == "unanswerable"
    assert answer_problem("Showroom does not include shoes; it lists apparel.", 200) is None
    assert answer_problem("  ", 200) == "empty_answer" and answer_problem("a b c", 2) == "overlong_answer"


def test_splits_interleave_in_proportion_to_their_targets():
    splits = assign_splits(30, {"train": 20, "eval": 5, "test": 5})
    assert splits.count("train") == 20 and splits.count("eval") == 5 and splits.count("test") == 5
    assert set(splits[:6]) == {"train", "eval", "test"}
    assert assign_splits(3, {"train": 0, "eval": 1, "test": 1}) == ["eval", "test", "eval"]


def test_a_passage_with_the_same_words_under_another_title_is_a_copy():
    a = Document("Descale the kettle every four weeks.", "Title: Kettle\nContent: Descale the kettle every four weeks.")
    assert is_copy(a, Document("Descale the kettle every four weeks!", "Title: Care"))
    assert not is_copy(a, Document("Charge the scooter overnight before the first ride."))


def test_a_record_cut_short_by_a_kill_is_dropped_and_the_log_continues(tmp_path):
    header = {"fingerprint": "f", "settings": {}}
    with WorkLog.open(tmp_path, header) as log:
        log.append({"position": 0})
    path = tmp_path / LOG_NAME
    path.write_text(path.read_text() + '{"position": 1, "ro')
    with WorkLog.open(tmp_path, header) as log:
        assert log.records == [{"position": 0}]
        log.append({"position": 1})
    assert [json.loads(line) for line in path.read_text().splitlines()][1:] == [{"position": 0}, {"position": 1}]
