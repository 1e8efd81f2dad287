"""Bad input through the real CLI entry point: exit status 1, one clear message, no traceback, nothing written."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from rqa.cli import main

ROOT = Path(__file__).resolve().parents[1]
GOOD = json.loads((ROOT / "example" / "train_w_qa.jsonl").read_text().splitlines()[0])


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err


def write(path: Path, *lines: str | dict) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


BROKEN_RECORDS = {
    "broken-json": ('{"question": ', "train.jsonl:2: is not valid JSON"),
    "missing-field": ({k: v for k, v in GOOD.items() if k != "gold_docs"}, "train.jsonl:2: field 'gold_docs'"),
    "wrong-type": ({**GOOD, "gold_answer": ["a"]}, "train.jsonl:2: field 'gold_answer': must be a string, got list"),
    "empty-gold": ({**GOOD, "gold_docs": []}, "train.jsonl:2: field 'gold_docs': is empty"),
    "empty-answer": ({**GOOD, "gold_answer": "  "}, "train.jsonl:2: field 'gold_answer': is empty"),
    "bad-history": ({**GOOD, "chat_history": [{"speaker": "user"}]}, "field 'chat_history[0].message': is missing"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_RECORDS))
def test_broken_training_record(case: str, tmp_path: Path, capsys) -> None:
    record, expected = BROKEN_RECORDS[case]
    train = write(tmp_path / "train.jsonl", GOOD, record)
    code, output = run_cli(["train", "--train_file", str(train), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 1 and expected in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()


def test_not_utf8_and_empty_files(tmp_path: Path, capsys) -> None:
    train = tmp_path / "train.jsonl"
    train.write_bytes(b'{"question": "\xff"}\n')
    code, output = run_cli(["train", "--train_file", str(train), "--dry_run", "true"], capsys)
    assert code == 1 and "train.jsonl:1: is not valid UTF-8" in output
    code, output = run_cli(["train", "--train_file", str(write(tmp_path / "empty.jsonl")), "--dry_run", "true"], capsys)
    assert code == 1 and "empty.jsonl: holds no QA records" in output


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--formatter", "mistrall"], "unknown formatter 'mistrall'. Did you mean 'mistral'? Available: auto,"),
        (["--loss", "answer_ce"], "unknown loss 'answer_ce'. Did you mean 'answer-ce'?"),
        (["--retriever", "dense"], "unknown retriever 'dense'. Did you mean 'dense-faiss'?"),
        (["--metrics", "rouge", "rogue"], "unknown metric 'rogue'. Did you mean 'rouge'?"),
        (
            ["--loss", "label-smoothed-ce", "--loss_option", "smothing=0.1"],
            "unknown option 'smothing' (accepted: smoothing)",
        ),
        (["--loss", "label-smoothed-ce:smoothing=2"], "smoothing must be in [0, 1)"),
        (["--train_context", "random"], "argument --train_context/--train-context: invalid choice: 'random'"),
    ],
)
def test_unknown_components_and_bad_options(flags: list[str], expected: str, tmp_path: Path, capsys) -> None:
    train = write(tmp_path / "train.jsonl", GOOD)
    code, output = run_cli(["train", "--train_file", str(train), *flags, "--dry_run", "true"], capsys)
    if "smoothing must be" in expected:  # a value the factory itself rejects is caught when it is built
        code, output = run_cli(
            ["train", "--train_file", str(train), *flags, "--output_dir", str(tmp_path / "o")], capsys
        )
    assert code == 1 and expected in " ".join(output.split()) and "Traceback" not in output


def test_hostile_pickle_database(tmp_path: Path, capsys) -> None:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    database = tmp_path / "db.pkl"
    database.write_bytes(pickle.dumps([Evil()]))
    train = write(tmp_path / "train.jsonl", GOOD)
    argv = ["train", "--train_file", str(train), "--full_dataset_file_path", str(database), "--dry_run", "true"]
    code, output = run_cli(argv, capsys)
    assert code == 1 and "db.pkl: is not a safe LocalRQA database pickle" in output
    assert not (tmp_path / "pwned").exists()


def test_max_seq_length_too_small_for_every_example(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    train = write(tmp_path / "train.jsonl", GOOD)
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(train), "--max_seq_length", "8"]
    code, output = run_cli([*argv, "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 1 and "--max_seq_length 8 is too small" in output and "train.jsonl:1" in output
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from rqa.errors import RqaError

    with pytest.raises(RqaError, match=r"missing\.jsonl: cannot be read"):
        main(["--debug", "train", "--train_file", str(tmp_path / "missing.jsonl"), "--dry_run", "true"])
