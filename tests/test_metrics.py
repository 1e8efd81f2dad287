"""The built-in metrics against hand-computed values, and ``score_rows`` over real prediction rows."""

from __future__ import annotations

import math

import pytest
from helpers import CONTRACT_METRICS, document, example

from rqa.builtin import metrics
from rqa.evaluation import prediction_row, score_rows
from rqa.pipeline import metric_factories, metric_names
from rqa.scoring import normalize_answer, token_prf


def docs(*texts: str) -> list[dict]:
    return [{"page_content": t} for t in texts]


def retrieval_row(gold: list[str], retrieved: list[str]) -> dict:
    return {"gold_docs": docs(*gold), "retrieved_docs": docs(*retrieved)}


def compute(metric: metrics.Metric, rows: list[dict]) -> dict[str, float]:
    metric.update(rows)
    return metric.compute()


def approx(expected: dict[str, float]) -> dict[str, float]:
    return pytest.approx(expected, abs=1e-12)  # type: ignore[return-value]


# ---------------------------------------------------------------- retrieval


def test_retrieval_gold_at_rank_one() -> None:
    scores = compute(metrics.retrieval(top_k=4), [retrieval_row(["g"], ["g", "x", "y", "z"])])
    assert scores == approx(
        {
            "retr/recall@1": 1.0,
            "retr/recall@4": 1.0,
            "retr/accuracy": 0.25,
            "retr/ndcg@4": 1.0,
            "retr/mrr": 1.0,
        }
    )


def test_retrieval_gold_at_rank_three_of_four() -> None:
    scores = compute(metrics.retrieval(top_k=4), [retrieval_row(["g"], ["x", "y", "g", "z"])])
    assert scores == approx(
        {
            "retr/recall@1": 0.0,
            "retr/recall@4": 1.0,
            "retr/accuracy": 0.25,
            "retr/ndcg@4": (1 / math.log2(4)) / 1.0,  # = 0.5
            "retr/mrr": 1 / 3,
        }
    )
    assert scores["retr/ndcg@4"] == pytest.approx(0.5)


def test_retrieval_two_gold_only_one_retrieved() -> None:
    scores = compute(metrics.retrieval(top_k=4), [retrieval_row(["g1", "g2"], ["g1", "x", "y", "z"])])
    ideal = 1 / math.log2(2) + 1 / math.log2(3)  # both gold at ranks 1 and 2
    assert scores == approx(
        {
            "retr/recall@1": 0.0,  # every gold document must be within K
            "retr/recall@4": 0.0,
            "retr/accuracy": 0.25,
            "retr/ndcg@4": 1.0 / ideal,
            "retr/mrr": 1.0,
        }
    )
    assert scores["retr/ndcg@4"] == pytest.approx(0.6131471927654584)


def test_retrieval_two_gold_both_retrieved_late() -> None:
    scores = compute(metrics.retrieval(top_k=4), [retrieval_row(["g1", "g2"], ["x", "g2", "y", "g1"])])
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert scores == approx(
        {
            "retr/recall@1": 0.0,
            "retr/recall@4": 1.0,
            "retr/accuracy": 0.5,
            "retr/ndcg@4": (1 / math.log2(3) + 1 / math.log2(5)) / ideal,
            "retr/mrr": 0.5,
        }
    )


def test_retrieval_no_gold_retrieved_is_all_zero() -> None:
    scores = compute(metrics.retrieval(top_k=4), [retrieval_row(["g"], ["w", "x", "y", "z"])])
    assert scores == {
        "retr/recall@1": 0.0,
        "retr/recall@4": 0.0,
        "retr/accuracy": 0.0,
        "retr/ndcg@4": 0.0,
        "retr/mrr": 0.0,
    }


def test_retrieval_gold_beyond_k_counts_only_for_mrr() -> None:
    scores = compute(metrics.retrieval(top_k=2), [retrieval_row(["g"], ["x", "y", "g"])])
    assert set(scores) == {"retr/recall@1", "retr/recall@2", "retr/accuracy", "retr/ndcg@2", "retr/mrr"}
    assert scores == approx(
        {
            "retr/recall@1": 0.0,
            "retr/recall@2": 0.0,
            "retr/accuracy": 1 / 3,
            "retr/ndcg@2": 0.0,
            "retr/mrr": 1 / 3,
        }
    )


def test_retrieval_keys_are_exactly_the_contract() -> None:
    scores = compute(metrics.retrieval(top_k=4), [retrieval_row(["g"], ["g"])])
    assert set(scores) == {"retr/recall@1", "retr/recall@4", "retr/accuracy", "retr/ndcg@4", "retr/mrr"}


def test_retrieval_averages_over_rows() -> None:
    rows = [
        retrieval_row(["g"], ["g", "x", "y", "z"]),  # rank 1
        retrieval_row(["g"], ["x", "y", "g", "z"]),  # rank 3
        retrieval_row(["g"], ["w", "x", "y", "z"]),  # miss
    ]
    scores = compute(metrics.retrieval(top_k=4), rows)
    assert scores == approx(
        {
            "retr/recall@1": 1 / 3,
            "retr/recall@4": 2 / 3,
            "retr/accuracy": (0.25 + 0.25 + 0.0) / 3,
            "retr/ndcg@4": (1.0 + 0.5 + 0.0) / 3,
            "retr/mrr": (1.0 + 1 / 3 + 0.0) / 3,
        }
    )


@pytest.mark.parametrize(
    "retrieved",
    [
        ["g", "g", "x", "y"],  # the gold document returned twice at the top
        ["g", "g", "g", "g"],
        ["x", "g", "g", "y"],
    ],
)
def test_retrieval_ndcg_stays_within_one_when_a_gold_document_repeats(retrieved: list[str]) -> None:
    scores = compute(metrics.retrieval(top_k=4), [retrieval_row(["g"], retrieved)])
    assert 0.0 <= scores["retr/ndcg@4"] <= 1.0
    assert 0.0 <= scores["retr/accuracy"] <= 1.0


def test_retrieval_ranks_the_distinct_documents() -> None:
    # distinct: g (1), x (2), y (3); a repeat is one document, at its first rank
    scores = compute(metrics.retrieval(top_k=4), [retrieval_row(["g"], ["g", "g", "x", "y"])])
    assert scores == approx(
        {
            "retr/recall@1": 1.0,
            "retr/recall@4": 1.0,
            "retr/accuracy": 1 / 3,  # one gold among three distinct documents, not two of four slots
            "retr/ndcg@4": 1.0,
            "retr/mrr": 1.0,
        }
    )
    # a repeated non-gold document moves the gold one up: distinct x (1), g (2), y (3)
    repeated_miss = compute(metrics.retrieval(top_k=2), [retrieval_row(["g"], ["x", "x", "g", "y"])])
    assert repeated_miss == approx(
        {
            "retr/recall@1": 0.0,
            "retr/recall@2": 1.0,
            "retr/accuracy": 1 / 3,
            "retr/ndcg@2": 1 / math.log2(3),
            "retr/mrr": 0.5,
        }
    )


def test_retrieval_two_gold_one_repeated_matches_the_list_without_repeats() -> None:
    with_repeats = compute(metrics.retrieval(top_k=4), [retrieval_row(["g1", "g2"], ["g1", "g1", "g2", "x"])])
    without = compute(metrics.retrieval(top_k=4), [retrieval_row(["g1", "g2"], ["g1", "g2", "x"])])
    assert with_repeats == approx(without)
    assert with_repeats["retr/ndcg@4"] == pytest.approx(1.0)


def test_prediction_row_with_repeated_gold_passage() -> None:
    row = prediction_row(
        example(passages=(KETTLE,)),
        [(document(KETTLE), 0.9), (document(KETTLE), 0.9), (document(FILTER), 0.5), (document(BASE), 0.4)],
        "descale every four weeks",
        0.010,
        1.0,
    )
    assert row["diagnosis"]["retrieval_hit"] is True
    assert len(row["retrieved_docs"]) == 4  # the row keeps what the retriever returned
    scores = score_rows([row], metric_factories(["retrieval"], 4))
    assert scores["retr/ndcg@4"] == pytest.approx(1.0)
    assert scores["retr/accuracy"] == pytest.approx(1 / 3)


def test_metrics_over_no_rows_are_empty() -> None:
    assert compute(metrics.retrieval(top_k=4), []) == {}
    assert compute(metrics.bleu(), []) == {"gen/bleu": 0.0}


# ---------------------------------------------------------------- token F1


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat!", "cat"),
        ("An apple, a day; the end.", "apple day end"),
        ("  Several   spaces\tand\nlines ", "several spaces and lines"),
        ("U.S.A. isn't", "usa isnt"),
        ("Theatre anthem", "theatre anthem"),  # articles only as whole words
        ("", ""),
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The Cat!", "cat", (1.0, 1.0, 1.0)),
        ("tea tea kettle", "tea kettle kettle", (2 / 3, 2 / 3, 2 / 3)),  # counts with multiplicity
        ("tea tea kettle", "tea", (1 / 3, 1.0, 0.5)),
        ("tea", "tea tea kettle", (1.0, 1 / 3, 0.5)),
        ("descale every four weeks", "descale the kettle every week", (2 / 4, 2 / 4, 0.5)),
        ("green kettle", "black teapot", (0.0, 0.0, 0.0)),
        ("", "", (1.0, 1.0, 1.0)),
        ("the", "a", (1.0, 1.0, 1.0)),  # both empty after normalisation
        ("", "cat", (0.0, 0.0, 0.0)),
        ("cat", "", (0.0, 0.0, 0.0)),
    ],
)
def test_token_prf(prediction: str, reference: str, expected: tuple[float, float, float]) -> None:
    assert token_prf(prediction, reference) == pytest.approx(expected)


def test_token_f1_metric_means() -> None:
    rows = [
        {"generated_answer": "The Cat!", "gold_answer": "cat"},
        {"generated_answer": "tea tea kettle", "gold_answer": "tea"},
        {"generated_answer": "green kettle", "gold_answer": "black teapot"},
    ]
    scores = compute(metrics.token_f1(), rows)
    assert scores == approx(
        {
            "gen/f1": (1.0 + 0.5 + 0.0) / 3,
            "gen/precision": (1.0 + 1 / 3 + 0.0) / 3,
            "gen/recall": (1.0 + 1.0 + 0.0) / 3,
        }
    )


# ---------------------------------------------------------------- ROUGE, BLEU

GEN_ROWS = [
    {"generated_answer": "Descale the kettle every four weeks.", "gold_answer": "Descale every four weeks."},
    {"generated_answer": "The base is not seated properly", "gold_answer": "E3 means the base is not seated."},
    {"generated_answer": "Running shoes wear out", "gold_answer": "Replace the filter every month."},
]


def test_rouge_matches_rouge_score() -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    reference = [scorer.score(r["gold_answer"], r["generated_answer"]) for r in GEN_ROWS]
    expected = {f"gen/{name}": sum(s[name].fmeasure for s in reference) / 3 for name in ("rouge1", "rouge2", "rougeL")}
    scores = compute(metrics.rouge(), GEN_ROWS)
    assert scores == approx(expected)
    assert 0 < scores["gen/rouge1"] < 1  # a non-trivial mix of matches and misses


def test_bleu_is_sacrebleu_corpus_bleu_scaled() -> None:
    import sacrebleu

    hypotheses = [r["generated_answer"] for r in GEN_ROWS]
    references = [r["gold_answer"] for r in GEN_ROWS]
    expected = sacrebleu.corpus_bleu(hypotheses, [references]).score / 100
    scores = compute(metrics.bleu(), GEN_ROWS)
    assert scores == approx({"gen/bleu": expected})
    assert 0 < scores["gen/bleu"] < 1


def test_bleu_of_identical_answers_is_one() -> None:
    rows = [{"generated_answer": r["gold_answer"], "gold_answer": r["gold_answer"]} for r in GEN_ROWS]
    assert compute(metrics.bleu(), rows)["gen/bleu"] == pytest.approx(1.0)


# ---------------------------------------------------------------- grounding, length, latency


def test_grounding_is_best_token_f1_over_retrieved_passages() -> None:
    rows = [
        {
            "generated_answer": "descale every four weeks",
            # 4 answer tokens, all in the 8-token passage: p = 1, r = 1/2, F1 = 2/3
            "retrieved_docs": docs("Unrelated text about shoes.", "Descale your kettle every four weeks in winter."),
        },
        {"generated_answer": "descale every four weeks", "retrieved_docs": []},
        {"generated_answer": "kettle", "retrieved_docs": docs("Kettle.", "kettle kettle")},  # F1 1.0 vs 2/3
    ]
    grounding = metrics.grounding()
    assert [grounding.per_row(r)["gen/f1_retrieved"] for r in rows] == pytest.approx([2 / 3, 0.0, 1.0])
    assert compute(grounding, rows) == approx({"gen/f1_retrieved": (2 / 3 + 0.0 + 1.0) / 3})


def test_answer_length_is_mean_word_count() -> None:
    rows = [{"generated_answer": a} for a in ("one two three", "", "  four  five ")]
    assert compute(metrics.answer_length(), rows) == approx({"gen/answer_words": (3 + 0 + 2) / 3})


def test_latency_means() -> None:
    rows = [
        {"latency": {"retrieval_ms": 10.0, "generation_s": 1.0, "e2e_s": 1.01}},
        {"latency": {"retrieval_ms": 30.0, "generation_s": 2.0, "e2e_s": 2.03}},
    ]
    assert compute(metrics.latency(), rows) == approx(
        {"latency/retrieval_ms": 20.0, "latency/generation_s": 1.5, "latency/e2e_s": 1.52}
    )


def test_latency_description_says_what_the_keys_measure() -> None:
    from rqa.plugins import load_plugins

    description = load_plugins()["metrics"].get("latency").description  # what rqa list-plugins shows
    for key in ("latency/retrieval_ms", "generation_s", "e2e_s"):
        assert key in description
    assert "retrieval of all questions ÷ count" in description
    assert "batch ÷ its size" in description
    assert "sum" in description


def test_latency_is_shares_of_batched_work() -> None:
    """retrieval_ms: the question set's retrieval ÷ questions; generation_s: the batch's time ÷ its size."""
    retrieval_seconds_per_question, generation_seconds_per_question = 0.2 / 4, 3.0 / 2  # 4 questions; batch of 2
    row = prediction_row(
        example(), [(document(KETTLE), 1.0)], "x", retrieval_seconds_per_question, generation_seconds_per_question
    )
    scores = compute(metrics.latency(), [row])
    assert scores == approx({"latency/retrieval_ms": 50.0, "latency/generation_s": 1.5, "latency/e2e_s": 1.55})


# ---------------------------------------------------------------- score_rows over prediction rows


KETTLE = "Descale the kettle every four weeks if your water is hard."
FILTER = "Rinse the filter under the tap once a month."
BASE = "Error E3 means the kettle is not seated on its base."
SHOES = "Running shoes should be replaced after 800 kilometres."


def prediction_rows() -> list[dict]:
    hit_exact = prediction_row(
        example(answer="Descale every four weeks.", passages=(KETTLE,)),
        [(document(KETTLE), 0.9), (document(FILTER), 0.5)],
        "descale every four weeks",  # F1 1.0
        0.010,
        1.0,
    )
    hit_partial = prediction_row(
        example(question="What does E3 mean?", answer="Kettle not seated.", passages=(BASE,)),
        [(document(FILTER), 0.8), (document(BASE), 0.7)],
        "kettle seated badly",  # 2 of 3 predicted tokens, 2 of 3 gold tokens: F1 2/3
        0.020,
        2.0,
    )
    miss = prediction_row(
        example(question="How often do I rinse the filter?", answer="Once a month.", passages=(FILTER,)),
        [(document(SHOES), 0.4), (document(KETTLE), 0.3)],
        "every four weeks",  # F1 0
        0.030,
        3.0,
    )
    return [hit_exact, hit_partial, miss]


def test_prediction_row_diagnosis() -> None:
    rows = prediction_rows()
    assert [r["diagnosis"]["retrieval_hit"] for r in rows] == [True, True, False]
    assert [r["diagnosis"]["answer_f1"] for r in rows] == pytest.approx([1.0, 2 / 3, 0.0])
    assert rows[0]["latency"] == pytest.approx({"retrieval_ms": 10.0, "generation_s": 1.0, "e2e_s": 1.01})
    assert [d["score"] for d in rows[0]["retrieved_docs"]] == [0.9, 0.5]


def test_score_rows_with_every_metric() -> None:
    rows = prediction_rows()
    scores = score_rows(rows, metric_factories(metric_names(["all"]), 4))
    split = {"gen/f1|retrieval_hit", "gen/f1|retrieval_miss"}
    assert CONTRACT_METRICS <= set(scores)
    plain = {key for key in scores if not key.startswith(("ci95_low/", "ci95_high/"))}
    assert plain == CONTRACT_METRICS | split | {"count/questions", "count/retrieval_hits"}
    for key in scores.keys() - plain:  # bootstrap intervals, only of metrics that exist
        assert key.split("/", 1)[1] in scores
        assert scores[key.replace("ci95_low/", "ci95_high/")] >= scores[key.replace("ci95_high/", "ci95_low/")]
    assert scores["gen/f1|retrieval_hit"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert scores["gen/f1|retrieval_miss"] == pytest.approx(0.0)
    assert scores["gen/f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert scores["count/questions"] == 3.0
    assert scores["count/retrieval_hits"] == 2.0
    # ranks 1, 2 and a miss, K = 4
    assert scores["retr/recall@1"] == pytest.approx(1 / 3)
    assert scores["retr/recall@4"] == pytest.approx(2 / 3)
    assert scores["retr/mrr"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert scores["retr/ndcg@4"] == pytest.approx((1.0 + 1 / math.log2(3) + 0.0) / 3)
    assert scores["retr/accuracy"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert scores["latency/retrieval_ms"] == pytest.approx(20.0)
    assert scores["latency/generation_s"] == pytest.approx(2.0)
    assert scores["latency/e2e_s"] == pytest.approx(2.02)
    assert scores["gen/answer_words"] == pytest.approx((4 + 3 + 3) / 3)
    assert all(isinstance(v, float) for v in scores.values())


def test_score_rows_split_keys_only_for_non_empty_subsets() -> None:
    factories = metric_factories(metric_names(["token-f1"]), 4)
    hits_only = score_rows(prediction_rows()[:2], factories)
    assert "gen/f1|retrieval_hit" in hits_only
    assert "gen/f1|retrieval_miss" not in hits_only
    misses_only = score_rows(prediction_rows()[2:], factories)
    assert "gen/f1|retrieval_hit" not in misses_only
    assert misses_only["gen/f1|retrieval_miss"] == 0.0
    # without gen/f1 there is no split at all
    retrieval_only = score_rows(prediction_rows(), metric_factories(["retrieval"], 4))
    assert not any("|" in key for key in retrieval_only)
    assert score_rows([], factories) == {"count/questions": 0.0, "count/retrieval_hits": 0.0}
