"""Builders shared by the model-level tests: the embedded tokenizer, a tiny random model, examples."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rqa.schema import Document, Example, Turn


@functools.lru_cache(maxsize=1)
def embedded_tokenizer() -> Any:
    """SmolLM2's real tokenizer (ChatML template), from the embedded model package."""
    from rqa.models import load_tokenizer, resolve_generator

    return load_tokenizer(resolve_generator(None))


@functools.cache
def example_index() -> Path:
    """The dense index of example/documents.jsonl, built once per test session by the real ``rqa index``: the runs
    that pass it as ``--full_dataset_index_path`` reuse it instead of each embedding the database again."""
    root = Path(tempfile.mkdtemp(prefix="rqa-example-index-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    example = Path(__file__).resolve().parents[1] / "example"
    rqa = [str(Path(sys.executable).parent / "rqa"), "index", "--documents", str(example / "documents.jsonl")]
    subprocess.run([*rqa, "--index", str(root / "index")], check=True, capture_output=True, timeout=600)
    return root / "index"


def tiny_model(tokenizer: Any, seed: int = 0, family: str = "llama", **overrides: Any) -> Any:
    """A randomly initialised two-layer causal LM (Llama unless ``family`` names another) with the tokenizer's
    vocabulary; ``overrides`` go to its config."""
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    torch.manual_seed(seed)
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        **overrides,
    }
    return AutoModelForCausalLM.from_config(CONFIG_MAPPING[family](**settings))


def document(text: str, title: str = "Kettle care") -> Document:
    return Document(
        page_content=text,
        fmt_content=f"Title: {title}\nContent: {text}",
        metadata={"title": title},
    )


def example(
    question: str = "How often should I descale?",
    answer: str = "Descale every four weeks in hard-water areas.",
    passages: tuple[str, ...] = ("Descale the kettle every four weeks if your water is hard.",),
    history: tuple[tuple[str, str], ...] = (),
) -> Example:
    return Example(
        question=question,
        gold_answer=answer,
        gold_docs=tuple(document(p) for p in passages),
        chat_history=tuple(Turn(role, content) for role, content in history),  # type: ignore[arg-type]
        source="test.jsonl:1",
    )


HISTORY = (
    ("user", "My kettle shows E3."),
    ("assistant", "E3 means the base is not seated; lift and reseat it."),
)


CONTRACT_METRICS = frozenset(
    {
        "retr/recall@1",
        "retr/recall@4",
        "retr/accuracy",
        "retr/ndcg@4",
        "retr/mrr",
        "gen/f1",
        "gen/precision",
        "gen/recall",
        "gen/rouge1",
        "gen/rouge2",
        "gen/rougeL",
        "gen/bleu",
        "gen/f1_retrieved",
        "gen/answer_words",
        "latency/retrieval_ms",
        "latency/generation_s",
        "latency/e2e_s",
    }
)  # every metrics file holds these keys (top_k 4)
