"""``rqa train-retriever``: the command end to end on a tiny random embedder, its bad-input errors, its loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rqa import contracts
from rqa.cli import main
from rqa.retriever_config import map_metric_name, parse_retriever_args

EXAMPLE = Path(__file__).resolve().parents[1] / "example"
RETR_KEYS = {"retr/recall@1", "retr/recall@4", "retr/ndcg@4", "retr/mrr", "retr/accuracy"}


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer random BERT with the embedded MiniLM's tokenizer, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rqa.models import resolve_embedder

    root = tmp_path_factory.mktemp("tiny-embedder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_embedder(None))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    encoder = Transformer(str(root / "hf"), max_seq_length=128)
    SentenceTransformer(modules=[encoder, Pooling(encoder.get_embedding_dimension())]).save(str(root / "st"))
    return root


def run(*argv: str, command: str = "train-retriever") -> int:
    try:
        main([command, *argv])
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def example_rows(count: int = 4) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLE / "train_w_qa.jsonl").read_text().splitlines()[:count]]


def test_trains_evaluates_over_the_database_and_saves_a_sentence_transformers_model(tiny_embedder, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "run"
    code = run(
        *("--model_name_or_path", str(tiny_embedder / "st")),
        *("--train_file", str(EXAMPLE / "train_w_qa.jsonl")),
        *("--eval-file", str(EXAMPLE / "eval_w_qa.jsonl")),
        *("--test_file", str(EXAMPLE / "test_w_qa.jsonl")),
        *("--full_dataset_file_path", str(EXAMPLE / "documents.jsonl")),
        *("--output_dir", str(out)),
        *("--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1"),
        *("--per_device_train_batch_size", "8", "--hard_neg_ratio", "0.5", "--report_to", "none"),
        *("--metric_for_best_model", "eval_retr/document_recall/recall4", "--load_best_model_at_end", "true"),
    )

    assert code == 0
    assert SentenceTransformer(str(out)).encode(["kettle"]).shape == (1, 32)
    for step in (0, 2):
        metrics = json.loads((out / "eval" / f"step-{step}-metrics.json").read_text())
        assert RETR_KEYS <= set(metrics), step
        assert metrics["count/questions"] == 10
        rows = (out / "eval" / f"step-{step}-predictions.jsonl").read_text().splitlines()
        assert len(json.loads(rows[0])["retrieved_docs"]) == 4
    test = json.loads((out / "test-metrics.json").read_text())
    assert RETR_KEYS <= set(test) and "ci95_low/retr/recall@4" in test
    assert len((out / "test-predictions.jsonl").read_text().splitlines()) == 10
    state = json.loads((out / "trainer_state.json").read_text())
    assert any("eval_retr/recall@4" in entry for entry in state["log_history"])
    assert any("test_retr/recall@4" in entry for entry in state["log_history"])
    assert state["best_metric"] is not None  # --metric_for_best_model found eval_retr/recall@4
    assert json.loads((out / "rqa_args.json").read_text())["resolved_loss"]["name"] == "contrastive"


def test_plain_hf_encoder_is_pooled_as_asked(tiny_embedder):
    from rqa.retriever_training import load_embedder

    model = load_embedder(str(tiny_embedder / "hf"), "cls")
    assert "'cls'" in repr(model[1]) or "cls_token" in repr(model[1])
    assert model.encode(["a question"]).shape == (1, 32)


def test_list_plugins_lists_contrastive_under_retriever_losses(capsys):
    assert run("--json", command="list-plugins") == 0
    components = json.loads(capsys.readouterr().out)["components"]
    entry = next(c for c in components if c["kind"] == "retriever_losses" and c["name"] == "contrastive")
    assert entry["plugin"] == "rqa-retriever-losses" and entry["package"] == "rqa"


def test_retriever_loss_contract():
    assert contracts.members("retriever_losses") == ("model", "__call__")


def test_localrqa_metric_name_maps_to_rqa_name():
    assert map_metric_name("eval_retr/document_recall/recall4") == "eval_retr/recall@4"
    assert map_metric_name("retr/document_recall/recall10") == "eval_retr/recall@10"
    assert map_metric_name("eval_retr/mrr") == "eval_retr/mrr"
    args = parse_retriever_args(["--metric-for-best-model", "eval_retr/document_recall/recall4", "--output_dir", "x"])
    assert args.metric_for_best_model == "eval_retr/recall@4"
    assert args.batch_sampler.value == "no_duplicates"


def test_config_file_and_both_flag_spellings(tmp_path):
    config = tmp_path / "retriever.yaml"
    config.write_text("hard_neg_ratio: 0.5\ntemperature: 0.1\n")
    args = parse_retriever_args(["--config", str(config), "--hard-neg-ratio", "0.25", "--pooling_type", "cls"])
    assert (args.hard_neg_ratio, args.temperature, args.pooling_type) == (0.25, 0.1, "cls")


def test_question_without_gold_passages_names_file_and_line(tmp_path, capsys):
    rows = example_rows()
    rows[2]["gold_docs"] = []
    train = write_jsonl(tmp_path / "train.jsonl", rows)

    assert run("--train_file", str(train), "--output_dir", str(tmp_path / "out")) == 1
    assert f"{train}:3: field 'gold_docs': is empty" in capsys.readouterr().err


def test_hard_negative_equal_to_the_gold_names_file_and_line(tmp_path, capsys):
    rows = example_rows()
    rows[1]["hard_neg_docs"] = [rows[1]["gold_docs"][0]]
    train = write_jsonl(tmp_path / "train.jsonl", rows)

    assert run("--train_file", str(train), "--output_dir", str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"{train}:2: field 'hard_neg_docs[0]': is the same passage as a gold passage" in err


def test_empty_document_database_is_refused(tmp_path, capsys):
    empty = tmp_path / "documents.jsonl"
    empty.write_text("\n")
    code = run(
        *("--train_file", str(EXAMPLE / "train_w_qa.jsonl"), "--eval_file", str(EXAMPLE / "eval_w_qa.jsonl")),
        *("--full_dataset_file_path", str(empty), "--output_dir", str(tmp_path / "out")),
    )
    assert code == 1
    assert f"{empty}: holds no documents" in capsys.readouterr().err


def test_unknown_loss_and_bad_temperature_fail_before_any_model_loads(tmp_path, capsys):
    train = str(EXAMPLE / "train_w_qa.jsonl")
    assert run("--train_file", train, "--loss", "contrastiv", "--output_dir", str(tmp_path)) == 1
    assert "unknown retriever loss 'contrastiv'. Did you mean 'contrastive'?" in capsys.readouterr().err
    assert run("--train_file", train, "--temperature", "0", "--output_dir", str(tmp_path)) == 1
    assert "--temperature must be above 0" in capsys.readouterr().err


def test_contrastive_equals_multiple_negatives_ranking_loss_with_scale_one_over_temperature(tiny_embedder):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from rqa.plugins import load_plugins

    model = SentenceTransformer(str(tiny_embedder / "st"))
    loss = load_plugins()["retriever_losses"].build("contrastive", {"temperature": "0.1"}, model=model)
    columns = [
        ["how do I descale it", "is the lid safe"],
        ["Descale monthly.", "The lid locks."],
        ["Warranty.", "Cord."],
    ]
    features = [model.tokenize(texts) for texts in columns]
    with torch.no_grad():
        ours = loss(features, None)
        reference = MultipleNegativesRankingLoss(model, scale=10.0)(features, None)
    assert torch.isclose(ours, reference)
    assert loss.scale == pytest.approx(10.0)
