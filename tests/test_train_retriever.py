"""``rqa train-retriever``: the command end to end on a tiny random embedder, its bad-input errors, its loss."""

from __future__ import annotations

import json
import os
import re
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
        *("--max_seq_length", "200"),  # the tiny embedder's own is 128
    )

    assert code == 0
    trained = SentenceTransformer(str(out))
    assert trained.encode(["kettle"]).shape == (1, 32)
    assert trained.max_seq_length == 200  # kept with the model, so every index built with it reads as far
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

    from rqa.report import build_report_figure

    assert (out / "report.png").stat().st_size > 10_000
    figure = build_report_figure(state["log_history"], 4, out / "eval", retrieval_only=True)
    titles = [axes.get_title(loc="left") for axes in figure.axes]
    assert titles[1] == "(b) Retrieval from the whole database, eval set"
    assert titles[3] == "(d) Where retrieval fails, eval set, 10 questions"
    legend = [text.get_text() for text in figure.axes[3].get_legend().get_texts()]
    assert legend == ["retrieval miss: no gold passage among the retrieved", "gold retrieved: a gold passage among "
                      "the retrieved"]  # fmt: skip


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


def test_max_seq_length_beyond_the_embedders_positions_is_refused(tiny_embedder, tmp_path, capsys):
    argv = ["--model_name_or_path", str(tiny_embedder / "st"), "--train_file", str(EXAMPLE / "train_w_qa.jsonl")]
    assert run(*argv, "--max_seq_length", "513", "--output_dir", str(tmp_path / "run")) == 1
    assert "--max_seq_length 513 is more than this embedder's 512 positions" in capsys.readouterr().err
    assert run(*argv, "--max_seq_length", "0", "--output_dir", str(tmp_path / "run")) == 1
    assert "--max_seq_length must be at least 1" in capsys.readouterr().err


def test_unknown_loss_and_bad_temperature_fail_before_any_model_loads(tmp_path, capsys):
    train = str(EXAMPLE / "train_w_qa.jsonl")
    assert run("--train_file", train, "--loss", "contrastiv", "--output_dir", str(tmp_path)) == 1
    assert "unknown retriever loss 'contrastiv'. Did you mean 'contrastive'?" in capsys.readouterr().err
    assert run("--train_file", train, "--temperature", "0", "--output_dir", str(tmp_path)) == 1
    assert "--temperature must be above 0" in capsys.readouterr().err


def question_gold_negative_batch(model):
    """Two questions, their gold passages and a hard negative each, tokenized as the trainer hands them over."""
    columns = [
        ["how do I descale it", "is the lid safe"],
        ["Descale monthly.", "The lid locks."],
        ["Warranty.", "Cord."],
    ]
    return [model.tokenize(texts) for texts in columns]


def test_contrastive_equals_multiple_negatives_ranking_loss_with_scale_one_over_temperature(tiny_embedder, monkeypatch):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from rqa.plugins import load_plugins

    model = SentenceTransformer(str(tiny_embedder / "st"))
    loss = load_plugins()["retriever_losses"].build("contrastive", {"temperature": "0.1"}, model=model)
    features = question_gold_negative_batch(model)
    with torch.no_grad():
        ours = loss(features, None)
        reference = MultipleNegativesRankingLoss(model, scale=10.0)(features, None)
    assert torch.isclose(ours, reference)
    assert loss.scale == pytest.approx(10.0)
    assert not loss.gather_across_devices  # one process: nothing to gather
    monkeypatch.setenv("WORLD_SIZE", "2")  # under several processes, every process's passages are negatives
    assert load_plugins()["retriever_losses"].build("contrastive", {}, model=model).gather_across_devices


# --- hard negatives, the database check, replug, stopping and resuming ---------------------------------------


def test_mined_hard_negatives_are_never_gold_nor_a_copy_of_it(tiny_embedder):
    from helpers import document, example
    from sentence_transformers import SentenceTransformer

    from rqa.retriever_data import mine_hard_negatives
    from rqa.schema import Document

    gold = "Descale the kettle every four weeks if your water is hard."
    copy = Document(page_content=gold, fmt_content=f"Title: A copy\nContent: {gold}")  # same passage, other title
    others = [document(f"Passage {i} about kettles, lids and warranty number {i}.") for i in range(6)]
    own_negative = document("The lid opens with the button on the handle.")
    question = example(passages=(gold,))
    question = type(question)(**{**question.__dict__, "hard_neg_docs": (own_negative,)})
    database = [document(gold), copy, *others, own_negative]

    model = SentenceTransformer(str(tiny_embedder / "st"))
    [mined] = mine_hard_negatives([question], database, model, 3)

    assert mined.hard_neg_docs[0] == own_negative  # the record's own come first
    assert len(mined.hard_neg_docs) == 4  # its own plus three mined, none repeated
    assert len({d.page_content for d in mined.hard_neg_docs}) == 4
    assert all(d.page_content != gold for d in mined.hard_neg_docs)


def test_hard_negatives_are_mined_with_a_named_retriever(tiny_embedder):
    """BM25 ranks a passage sharing the question's rare words first; that passage, not the gold, is mined first."""
    from helpers import document, example
    from sentence_transformers import SentenceTransformer

    from rqa.plugins import get_plugins
    from rqa.retriever_data import mine_hard_negatives

    gold = "Hold the ZX-4411's reset pin for ten seconds to restore factory settings."
    lexical_twin = document("The ZX-4411 reset pin sits under the rubber foot; factory settings include Wi-Fi.")
    others = [document(f"Passage {i} about kettles, lids and warranty number {i}.") for i in range(6)]
    question = example(question="How do I restore factory settings on the ZX-4411?", passages=(gold,))
    database = [document(gold), lexical_twin, *others]
    bm25 = get_plugins()["retrievers"].build("bm25", {})
    bm25.build(database)
    expected = [d for d, _ in bm25.retrieve([question.question], 3)[0] if d.page_content != gold][:2]

    model = SentenceTransformer(str(tiny_embedder / "st"))
    [mined] = mine_hard_negatives([question], database, model, 2, retriever=bm25)

    assert list(mined.hard_neg_docs) == expected
    assert mined.hard_neg_docs[0] == lexical_twin


def test_the_mining_retriever_ranks_with_the_loaded_model_reading_passages_as_training_does(tiny_embedder):
    """Its dense members get the model already loaded (with the pooling training uses, no second load) and, unless
    the spec says otherwise, --embed_urls as training settled it: a dense miner then mines what the default does."""
    from helpers import document, example
    from sentence_transformers import SentenceTransformer

    from rqa.pipeline import build_retriever, choose, with_defaults
    from rqa.retriever_data import mine_hard_negatives

    model = SentenceTransformer(str(tiny_embedder / "st"))
    database = [document(f"Passage {i} about kettles, lids and warranty number {i}.") for i in range(8)]
    questions = [
        example(question=f"Which warranty covers lid {i}?", passages=(database[i].page_content,)) for i in (1, 5)
    ]

    def miner(spec: str):
        mining = with_defaults(choose("retrievers", spec), embed_urls=False)
        return build_retriever(mining, database, None, embedding_model=str(tiny_embedder / "st"), encoder=model)

    hybrid = miner("hybrid:depth=10")
    assert hybrid.members["dense-faiss"].encoder is model and hybrid.members["dense-faiss"].embed_urls is False
    dense = miner("dense-faiss")
    assert dense.encoder is model and dense.embed_urls is False
    assert miner("dense-faiss:embed_urls=true").embed_urls is True  # the spec's own value wins
    assert with_defaults(choose("retrievers", "bm25"), embed_urls=False).options == {}  # not an option of bm25
    default = mine_hard_negatives(questions, database, model, 3, embed_urls=False)
    assert mine_hard_negatives(questions, database, model, 3, embed_urls=False, retriever=dense) == default


def test_training_mines_with_the_named_retriever_and_refuses_an_unknown_one(tiny_embedder, tmp_path, capsys):
    common = [
        *("--model_name_or_path", str(tiny_embedder / "st")),
        *("--train_file", str(EXAMPLE / "train_w_qa.jsonl")),
        *("--full_dataset_file_path", str(EXAMPLE / "documents.jsonl")),
        *("--max_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none"),
    ]
    assert run(*common, "--mining_retriever", "bm52", "--output_dir", str(tmp_path / "bad")) == 1
    assert "unknown retriever 'bm52'. Did you mean 'bm25'?" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before any model loads or folder is made

    out = tmp_path / "run"
    assert run(*common, "--mining_retriever", "hybrid:depth=10", "--output_dir", str(out)) == 0
    said = " ".join("".join(capsys.readouterr()).split())
    assert "hybrid index: built" in said and "mined up to 4 hard negatives per question" in said
    assert json.loads((out / "rqa_args.json").read_text())["mining_retriever"] == "hybrid:depth=10"

    unused = tmp_path / "unused"
    assert run(*common, "--mining_retriever", "bm25", "--mine_hard_negatives", "0", "--output_dir", str(unused)) == 0
    said = " ".join("".join(capsys.readouterr()).split())
    assert "--mining_retriever bm25 is not used: --mine_hard_negatives is 0" in said
    assert "bm25 index: built" not in said


def test_training_adds_inverse_cloze_rows_from_the_database(tiny_embedder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        *("--model_name_or_path", str(tiny_embedder / "st"), "--train_file", str(EXAMPLE / "train_w_qa.jsonl")),
        *("--full_dataset_file_path", str(EXAMPLE / "documents.jsonl"), "--inverse_cloze", "1"),
        *("--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--output_dir", str(out)),
    ]
    assert run(*argv) == 0
    said = " ".join("".join(capsys.readouterr()).split())
    assert re.search(r"\b[1-9]\d* inverse-cloze rows from \d+ database passages", said)
    assert json.loads((out / "rqa_args.json").read_text())["inverse_cloze"] == 1

    bad = [*argv[:-1], str(tmp_path / "bad")]
    bad[bad.index("--inverse_cloze") + 1] = "-1"
    assert run(*bad) != 0
    assert "--inverse_cloze must be 0 or more, got -1" in "".join(capsys.readouterr())
    assert not (tmp_path / "bad").exists()


def test_inverse_cloze_rows_ask_for_a_passage_with_one_of_its_sentences():
    from rqa.retriever_data import inverse_cloze_rows
    from rqa.schema import Document

    sentences = ["The kettle holds two litres of water.", "Its lid opens with the button.", "Descale it every month."]
    long = Document(
        " ".join(sentences), "Source: https://example.com/kettle\nTitle: Kettle\nContent: " + " ".join(sentences)
    )
    short = Document("One sentence only, nothing else.", "Title: Short\nContent: One sentence only, nothing else.")
    rows = inverse_cloze_rows([long, short], per_passage=2, seed=3, keep_rate=0.0)

    assert len(rows) == 2  # two of the long passage's sentences; the one-sentence passage has no rest to match
    assert len({row["anchor"] for row in rows}) == 2 and all(row["anchor"] in sentences for row in rows)
    for row in rows:
        assert row["anchor"] not in row["positive"]  # the rest of the passage, as rqa embeds it
        assert row["positive"].startswith("Source: https://example.com/kettle\nTitle: Kettle")
        assert all(other in row["positive"] for other in sentences if other != row["anchor"])
    assert rows == inverse_cloze_rows([long, short], per_passage=2, seed=3, keep_rate=0.0)  # the seed decides
    kept = inverse_cloze_rows([long], per_passage=1, seed=3, keep_rate=1.0, embed_urls=False)
    assert kept[0]["anchor"] in kept[0]["positive"] and "https://" not in kept[0]["positive"]


def test_rows_carry_up_to_negatives_per_row_grouped_by_how_many():
    import dataclasses

    from helpers import document, example

    from rqa.retriever_data import training_dataset, training_rows

    def with_negatives(question: str, count: int):
        negatives = tuple(document(f"{question} wrong passage {i}") for i in range(count))
        return dataclasses.replace(example(question=question, passages=(f"{question} gold",)), hard_neg_docs=negatives)

    examples = [with_negatives("five", 5), with_negatives("three", 3), with_negatives("two", 2), example("none")]
    groups = training_rows(examples, hard_neg_ratio=1.0, seed=0, negatives_per_row=3)

    assert sorted(groups) == [0, 2, 3]
    assert [row["anchor"] for row in groups[3]] == ["five", "three"]
    for row in groups[3]:
        negatives = [row[f"negative_{i}"] for i in (1, 2, 3)]
        assert len(set(negatives)) == 3 and all(n.startswith(f"Title: Kettle care\nContent: {row['anchor']} wrong")
                                                for n in negatives)  # fmt: skip
    dataset = training_dataset(groups)
    assert set(dataset) == {"3-hard-negatives", "2-hard-negatives", "pairs"}
    assert dataset["2-hard-negatives"].column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert dataset["pairs"].column_names == ["anchor", "positive"]
    one = training_rows(examples[:2], hard_neg_ratio=1.0, seed=0)
    assert list(one) == [1] and list(training_dataset(one).column_names) == ["anchor", "positive", "negative"]


def test_without_urls_the_rows_the_checkpoints_and_the_model_read_passages_alike(tiny_embedder, tmp_path):
    from rqa.retrieval import DenseFaissRetriever
    from rqa.retriever_data import training_rows
    from rqa.schema import read_examples

    examples = read_examples(EXAMPLE / "train_w_qa.jsonl")
    rows = [row for group in training_rows(examples, 1.0, 0, embed_urls=False).values() for row in group]
    assert not any("http" in row["positive"] + row.get("negative", "") for row in rows)
    assert any("http" in row["positive"] for group in training_rows(examples, 1.0, 0).values() for row in group)

    out = tmp_path / "run"
    code = run(
        *("--model_name_or_path", str(tiny_embedder / "st"), "--embed_urls", "false"),
        *("--train_file", str(EXAMPLE / "train_w_qa.jsonl"), "--eval_file", str(EXAMPLE / "eval_w_qa.jsonl")),
        *("--full_dataset_file_path", str(EXAMPLE / "documents.jsonl"), "--output_dir", str(out)),
        *("--max_steps", "1", "--eval_steps", "1", "--save_steps", "1", "--report_to", "none"),
    )
    assert code == 0
    for folder in (out, out / "checkpoint-1"):
        assert DenseFaissRetriever("dense-faiss", str(folder)).embed_urls is False, folder
        assert DenseFaissRetriever("dense-faiss", str(folder)).windows is True, folder  # the trained model's default
    # training further from it keeps reading passages without URLs, unless asked otherwise
    from rqa.retriever_config import parse_retriever_args
    from rqa.retriever_training import embed_urls_to_train

    assert embed_urls_to_train(parse_retriever_args(["--model_name_or_path", str(out)])) is False
    asked = parse_retriever_args(["--model_name_or_path", str(out), "--embed_urls", "true"])
    assert embed_urls_to_train(asked) is True
    from rqa.retriever_training import windows_to_train

    assert windows_to_train(parse_retriever_args([])) is True
    assert windows_to_train(parse_retriever_args(["--windows", "false"])) is False
    from rqa.retrieval import record_reading

    record_reading(out, False, False)
    assert windows_to_train(parse_retriever_args(["--model_name_or_path", str(out)])) is False  # as recorded


def test_gold_passage_missing_from_the_database_names_file_and_line(tmp_path, capsys):
    rows = example_rows()
    rows[3]["gold_docs"][0]["page_content"] = "A passage that the database does not hold."
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code = run(
        *("--train_file", str(train), "--full_dataset_file_path", str(EXAMPLE / "documents.jsonl")),
        *("--output_dir", str(tmp_path / "out")),
    )
    assert code == 1
    assert f"{train}:4: field 'gold_docs[0]': is not in the document database" in capsys.readouterr().err


def test_answer_likelihood_is_minus_the_models_own_answer_loss(tiny_model_dir):
    import torch
    from helpers import document, example

    from rqa.replug import AnswerLikelihood

    likelihood = AnswerLikelihood(str(tiny_model_dir), "auto", max_seq_length=512, batch_size=4)
    question = example()
    passages = [document("Descale monthly."), document("The warranty lasts two years, parts and labour.")]
    [scores] = likelihood.scores([question], [0], [passages]).tolist()

    for passage, score in zip(passages, scores, strict=True):
        encoded = likelihood.encoder.encode(question, [passage])
        with torch.no_grad():
            loss = likelihood.model(
                input_ids=torch.tensor([encoded["input_ids"]]), labels=torch.tensor([encoded["labels"]])
            ).loss
        assert score == pytest.approx(-loss.item(), abs=1e-4)  # padded batch == each pair alone
    assert likelihood.scored_pairs == 2
    likelihood.scores([question], [0], [passages[::-1]])
    assert likelihood.scored_pairs == 2  # the frozen generator's scores are cached


def test_replug_trains_through_the_cli_refreshing_its_index(tiny_embedder, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "replug"
    code = run(
        *("--model_name_or_path", str(tiny_embedder / "st"), "--loss", "replug"),
        *("--generator_model", str(tiny_model_dir), "--num_docs", "3", "--refresh_step", "2"),
        *("--train_file", str(EXAMPLE / "train_w_qa.jsonl")),
        *("--full_dataset_file_path", str(EXAMPLE / "documents.jsonl")),
        *("--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4"),
        *("--save_strategy", "no", "--report_to", "none", "--logging_steps", "1"),
    )
    assert code == 0
    assert capsys.readouterr().out.count("replug: refreshed the index") == 2  # before steps 0 and 2
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 3 and all(loss == loss and loss >= 0 for loss in losses)  # KL: finite, non-negative
    resolved = json.loads((out / "rqa_args.json").read_text())["resolved_loss"]
    assert resolved == {"name": "replug", "options": {"generator_model": str(tiny_model_dir), "refresh_steps": 2,
                                                      "num_docs": 3}}  # fmt: skip


def test_loss_flags_another_loss_takes_are_ignored_with_a_warning(tmp_path, caplog):
    from rqa.retriever_training import _choose_loss

    args = parse_retriever_args(["--train_file", "x", "--generator_model", "gpt", "--temperature", "0.1"])
    with caplog.at_level("WARNING", logger="rqa"):
        choice = _choose_loss(args)
    assert choice.options == {"temperature": 0.1}
    assert "--generator_model is not an option of the retriever loss 'contrastive': ignored" in caplog.text


@pytest.fixture
def rediscover_plugins():
    """This process discovered plugins before the test wrote its own: discover again, and again after."""
    from rqa.plugins import get_plugins

    get_plugins.cache_clear()
    yield
    get_plugins.cache_clear()


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(
    tiny_embedder, make_plugin, rediscover_plugins, tmp_path, capsys
):
    make_plugin(
        "sigterm-loss",
        """
        import signal

        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from rqa import hookimpl


        class StopsTheRun(MultipleNegativesRankingLoss):
            def forward(self, features, labels):
                signal.raise_signal(signal.SIGTERM)  # as a scheduler would, in the middle of step 1
                return super().forward(features, labels)


        @hookimpl
        def register_retriever_losses(register):
            register("sigterm", lambda model: StopsTheRun(model))
        """,
    )
    out = tmp_path / "run"
    common = (
        *("--model_name_or_path", str(tiny_embedder / "st"), "--train_file", str(EXAMPLE / "train_w_qa.jsonl")),
        *("--output_dir", str(out), "--per_device_train_batch_size", "4", "--report_to", "none"),
        *("--save_steps", "100", "--logging_steps", "1"),
    )
    assert run(*common, "--loss", "sigterm", "--max_steps", "3") == 1
    assert "stopped by SIGTERM at step 1" in capsys.readouterr().err
    assert (out / "checkpoint-1").is_dir()

    assert run(*common, "--max_steps", "2") == 1  # never silently mixed with the earlier run
    assert "--resume_from_checkpoint" in capsys.readouterr().err
    assert run(*common, "--max_steps", "2", "--resume_from_checkpoint", "latest") == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]


def test_two_processes_gather_negatives_and_one_writes(tiny_embedder, tmp_path):
    """torchrun, two CPU processes over gloo: each process's batch half sees the other's passages as negatives
    (the loss gathers them), every process scores each evaluation, only the main one writes and reports."""
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    out = tmp_path / "run"
    command = [
        str(bin_dir / "torchrun"), "--nproc_per_node", "2", str(bin_dir / "rqa"), "train-retriever",
        "--model_name_or_path", str(tiny_embedder / "st"), "--train_file", str(EXAMPLE / "train_w_qa.jsonl"),
        "--eval_file", str(EXAMPLE / "eval_w_qa.jsonl"), "--test_file", str(EXAMPLE / "test_w_qa.jsonl"),
        "--full_dataset_file_path", str(EXAMPLE / "documents.jsonl"), "--output_dir", str(out),
        "--max_steps", "2", "--eval_steps", "2", "--save_strategy", "no", "--per_device_train_batch_size", "4",
        "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true",
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("Done. Results:") == 1
    for step in (0, 2):
        rows = (out / "eval" / f"step-{step}-predictions.jsonl").read_text().splitlines()
        assert len(rows) == 10  # every question once: one process wrote
    assert len((out / "test-predictions.jsonl").read_text().splitlines()) == 10
    state = json.loads((out / "trainer_state.json").read_text())
    assert sum("eval_retr/recall@4" in entry for entry in state["log_history"]) == 2


def test_contrastive_options_reach_the_loss_and_wrong_ones_name_the_valid_values(tiny_embedder):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from rqa.errors import ComponentOptionError
    from rqa.plugins import load_plugins

    model = SentenceTransformer(str(tiny_embedder / "st"))
    losses = load_plugins()["retriever_losses"]
    options = {"directions": "query_to_doc;doc_to_doc", "hardness_mode": "hard_negatives", "hardness_strength": "5"}
    loss = losses.build("contrastive", options, model=model)
    features = question_gold_negative_batch(model)
    with torch.no_grad():
        ours = loss(features, None)
        same = MultipleNegativesRankingLoss(
            model, scale=20.0, directions=("query_to_doc", "doc_to_doc"), hardness_mode="hard_negatives",
            hardness_strength=5.0,
        )(features, None)  # fmt: skip
        plain = MultipleNegativesRankingLoss(model, scale=20.0)(features, None)
    assert torch.isclose(ours, same) and not torch.isclose(ours, plain)
    with pytest.raises(ComponentOptionError, match="among query_to_doc, doc_to_query, query_to_query, doc_to_doc"):
        losses.build("contrastive", {"directions": "doc_to_doc"}, model=model)
    with pytest.raises(ComponentOptionError, match="in_batch_negatives, hard_negatives, all_negatives"):
        losses.build("contrastive", {"hardness_mode": "hardest"}, model=model)


def test_a_guide_leaves_out_the_negatives_it_scores_above_the_gold_passage(tiny_embedder):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss, MultipleNegativesRankingLoss

    from rqa.errors import ComponentOptionError
    from rqa.plugins import load_plugins

    model = SentenceTransformer(str(tiny_embedder / "st"))
    losses = load_plugins()["retriever_losses"]
    loss = losses.build("contrastive", {"guide": "base", "guide_margin": "0.1"}, model=model)
    assert loss.guide is not model and not any(p.requires_grad for p in loss.guide.parameters())
    features = question_gold_negative_batch(model)
    with torch.no_grad():
        ours = loss(features, None)
        same = GISTEmbedLoss(
            model, model, temperature=0.05, margin=0.1, contrast_anchors=False, contrast_positives=False
        )(features, None)
        plain = MultipleNegativesRankingLoss(model, scale=20.0)(features, None)
        every_negative_out = losses.build("contrastive", {"guide": "base", "guide_margin": "2"}, model=model)
        left_alone = losses.build("contrastive", {"guide": "base", "guide_margin": "-2"}, model=model)
        assert torch.isclose(ours, same)
        # cosine similarities lie within [-1, 1]: a margin of 2 leaves only the gold passage, one of -2 keeps all
        assert every_negative_out(features, None).item() == pytest.approx(0.0, abs=1e-6)
        assert torch.isclose(left_alone(features, None), plain)
    with pytest.raises(ComponentOptionError, match="does not combine with hardness_mode or doc_to_query"):
        losses.build("contrastive", {"guide": "base", "directions": "query_to_doc;doc_to_query"}, model=model)


def test_how_often_a_run_evaluates_does_not_change_the_trained_model(tiny_embedder, tmp_path):
    """Evaluation's empty DataLoader draws from torch's generator; dropout and batches after it must not depend on
    how often a run evaluates."""
    import torch
    from sentence_transformers import SentenceTransformer

    weights = {}
    for schedule in (("--eval_strategy", "no", "--eval_on_start", "false"), ("--eval_steps", "1")):
        out = tmp_path / schedule[1]
        code = run(
            *("--model_name_or_path", str(tiny_embedder / "st")),
            *("--train_file", str(EXAMPLE / "train_w_qa.jsonl")),
            *("--eval_file", str(EXAMPLE / "eval_w_qa.jsonl")),
            *("--full_dataset_file_path", str(EXAMPLE / "documents.jsonl")),
            *("--output_dir", str(out), *schedule, "--max_steps", "3", "--save_strategy", "no"),
            *("--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none"),
        )
        assert code == 0
        weights[schedule[1]] = SentenceTransformer(str(out)).state_dict()
    assert (tmp_path / "1" / "eval" / "step-3-metrics.json").is_file()
    base = SentenceTransformer(str(tiny_embedder / "st")).state_dict()
    assert not all(torch.equal(base[name], value) for name, value in weights["no"].items())  # it trained
    assert all(torch.equal(weights["1"][name], value) for name, value in weights["no"].items())
