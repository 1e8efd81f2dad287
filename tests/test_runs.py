"""``rqa_args.json`` through ``RunRecord``: written and read by one record, with the plugin versions a run used;
files written before those were recorded still load."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest

import rqa
from rqa.errors import RqaError
from rqa.pipeline import ComponentChoice, choose
from rqa.provenance import ComponentSource, plugin_versions
from rqa.runs import RUN_ARGS, RunRecord, read_run

# the keys a run's file had before versions were recorded (a real file, shortened)
OLD_FILE = {
    "output_dir": "runs/old",
    "learning_rate": 1e-05,
    "per_device_eval_batch_size": 8,
    "eval_embedding_model": None,
    "train_file": "example/train_w_qa.jsonl",
    "full_dataset_file_path": "example/documents.jsonl",
    "full_dataset_index_path": None,
    "max_seq_length": 1024,
    "top_k": 4,
    "max_new_tokens": 64,
    "use_flash_attention": False,
    "resolved_model_path": "/cache/models/smollm2",
    "resolved_formatter": {"name": "auto", "options": {}},
    "resolved_loss": {"name": "label-smoothed-ce", "options": {"smoothing": 0.1}},
    "resolved_retriever": {"name": "dense-faiss", "options": {"batch_size": 16}},
    "resolved_metrics": ["retrieval", "token-f1"],
}


def write(directory: Path, content: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_ARGS).write_text(json.dumps(content))
    return directory


def test_a_new_record_round_trips_and_names_the_provider_of_every_component(tmp_path: Path) -> None:
    record = RunRecord.create(
        tmp_path / "run",
        {"top_k": 3, "max_seq_length": 512, "output_dir": str(tmp_path / "run")},
        model_path="some/model",
        formatter=choose("formatters", "prefixes", ["user_prefix=Q"]),
        loss=choose("losses", "label-smoothed-ce:smoothing=0.2"),
        retriever=choose("retrievers", "dense-faiss", ["batch_size=8"]),
        metrics=["retrieval", "token-f1"],
    )
    path = record.write()

    written = json.loads(path.read_text())
    assert written == record.to_json()
    assert read_run(tmp_path / "run") == record
    assert written["rqa_version"] == rqa.__version__
    assert written["resolved_loss"] == {"name": "label-smoothed-ce", "options": {"smoothing": 0.2}}
    sources = {(s["kind"], s["name"]): s for s in written["resolved_components"]}
    assert set(sources) == {
        ("formatters", "prefixes"),
        ("losses", "label-smoothed-ce"),
        ("retrievers", "dense-faiss"),
        ("metrics", "retrieval"),
        ("metrics", "token-f1"),
    }
    assert sources[("formatters", "prefixes")]["options"] == {"user_prefix": "Q"}
    assert sources[("retrievers", "dense-faiss")]["options"] == {"batch_size": 8}
    for source in sources.values():
        assert source["package"] == "rqa" and source["version"] == version("rqa")
        assert source["plugin"].startswith("rqa-")  # the built-in plugin that registered the name


def test_an_old_file_still_loads_and_is_written_back_unchanged(tmp_path: Path) -> None:
    record = read_run(write(tmp_path / "run", OLD_FILE))

    assert record is not None and record.rqa_version is None and record.sources == ()
    assert record.model_path == "/cache/models/smollm2"
    assert record.formatter == ComponentChoice("formatters", "auto", {})
    assert record.loss == ComponentChoice("losses", "label-smoothed-ce", {"smoothing": 0.1})
    assert record.retriever == ComponentChoice("retrievers", "dense-faiss", {"batch_size": 16})
    assert record.metrics == ["retrieval", "token-f1"]
    assert (record.top_k, record.max_new_tokens, record.max_seq_length, record.eval_batch_size) == (4, 64, 1024, 8)
    assert record.documents == "example/documents.jsonl" and record.qa_files == ("example/train_w_qa.jsonl",)
    assert record.to_json() == OLD_FILE  # no key added, none lost, same order
    assert list(record.to_json()) == list(OLD_FILE)


def test_a_retriever_runs_loss_keeps_its_kind(tmp_path: Path) -> None:
    loss = choose("retriever_losses", "contrastive")
    RunRecord.create(tmp_path, {"top_k": 4}, loss=loss).write()
    assert read_run(tmp_path).loss == ComponentChoice("retriever_losses", "contrastive", loss.options)


def test_plugin_versions_for_other_records() -> None:
    versions = plugin_versions([choose("retrievers", "dense-faiss"), None])
    assert versions["rqa_version"] == rqa.__version__
    (source,) = versions["resolved_components"]
    assert ComponentSource.from_json(source) == ComponentSource(
        "retrievers", "dense-faiss", {}, source["plugin"], "rqa", version("rqa")
    )


@pytest.mark.parametrize(
    ("components", "message"),
    [
        ({"kind": "formatters"}, "'resolved_components' should be a list of"),
        ("chatml", "'resolved_components' should be a list of"),
        ([{"kind": "formatters", "name": "chatml", "version": 1}], "'resolved_components' should be a list of"),
    ],
)
def test_a_broken_components_entry_names_the_file(tmp_path: Path, components: object, message: str) -> None:
    run = write(tmp_path / "run", {**OLD_FILE, "resolved_components": components})
    with pytest.raises(RqaError, match=str(run / RUN_ARGS).replace("\\", "\\\\") + ".*" + message):
        read_run(run)
