"""``rqa train-retriever`` arguments: LocalRQA's CTL flags, rqa's own, and every sentence-transformers training flag.

One dataclass subclassing ``SentenceTransformerTrainingArguments`` (itself Hugging Face's ``TrainingArguments``),
parsed by ``HfArgumentParser`` as ``rqa train`` parses its flags, so LocalRQA's retriever command lines parse
unchanged and ``--config FILE`` works the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sentence_transformers import SentenceTransformerTrainingArguments
from transformers import HfArgumentParser

from rqa.config import parse_with_config, repeatable_options, settle_devices, settle_progress

POOLING_TYPES = ("mean", "cls", "last")
# LocalRQA logs retrieval recall as ``eval_retr/document_recall/recall4``; rqa's name is ``eval_retr/recall@4``
_LOCALRQA_RECALL = re.compile(r"^(?:eval_)?retr/document_recall/recall(\d+)$")


def map_metric_name(name: str | None) -> str | None:
    """rqa's name for a LocalRQA metric name given to ``--metric_for_best_model``; other names pass unchanged."""
    if name is None:
        return None
    match = _LOCALRQA_RECALL.match(name)
    return f"eval_retr/recall@{match.group(1)}" if match else name


@dataclass
class RqaRetrieverTrainingArguments(SentenceTransformerTrainingArguments):
    # --- LocalRQA's flags, same names and meaning ---
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Embedding model to fine-tune: a sentence-transformers folder, a plain Hugging Face encoder "
            "(pooled with --pooling_type), or a Hub id. Default: the embedded all-MiniLM-L6-v2."
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "Training QA file (JSONL)."})
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation QA file (JSONL)."})
    test_file: str | None = field(default=None, metadata={"help": "Test QA file, predicted after training."})
    full_dataset_file_path: str | None = field(
        default=None,
        metadata={"help": "Document database (JSONL or LocalRQA .pkl) that evaluation retrieves from."},
    )
    pooling_type: str | None = field(
        default=None,
        metadata={
            "help": "Pooling of a plain Hugging Face encoder: mean, cls or last. A sentence-transformers model "
            "keeps its own. Default: mean."
        },
    )
    hard_neg_ratio: float = field(
        default=1.0,
        metadata={
            "help": "Share of training questions that also get a hard negative from their hard_neg_docs (LocalRQA's "
            "default: 0.05)."
        },
    )
    temperature: float | None = field(
        default=None,
        metadata={"help": "Softmax temperature of the contrastive loss. Default: the loss's own (0.05, LocalRQA's)."},
    )
    # --- the replug loss (LocalRQA's RPG flags as aliases) ---
    generator_model: str | None = field(
        default=None,
        metadata={
            "aliases": ["--lm_model_path"],
            "help": "replug: the generator whose answer likelihoods train the retriever. Default: the embedded one.",
        },
    )
    refresh_steps: int | None = field(
        default=None,
        metadata={"aliases": ["--refresh_step"], "help": "replug: rebuild the index every N steps. Default: 50."},
    )
    num_docs: int | None = field(
        default=None, metadata={"help": "replug: passages retrieved per training question. Default: 8."}
    )
    lm_temperature: float | None = field(
        default=None, metadata={"help": "replug: temperature of the generator's distribution. Default: 0.1."}
    )
    retrieve_temperature: float | None = field(
        default=None, metadata={"help": "replug: temperature of the retriever's distribution. Default: 0.1."}
    )
    # --- rqa's own ---
    mine_hard_negatives: int = field(
        default=4,
        metadata={
            "help": "Also take each question's top K passages from the base model's index that are not gold (nor a "
            "copy of a gold passage) as hard negatives. 0: only the records' hard_neg_docs."
        },
    )
    mining_retriever: str | None = field(
        default=None,
        metadata={
            "help": "Rank passages for --mine_hard_negatives with this registered retriever (name or "
            "name:key=value,...; bm25, or hybrid: the starting model fused with BM25) instead of the starting "
            "model's embeddings alone. The starting model is its embedding model."
        },
    )
    embed_urls: bool | None = field(
        default=None,
        metadata={
            "help": "Embed passages with the URLs in their text (false: without; a URL is an opaque string of ids "
            "to an embedder, and all chunks of an article share one). The trained model records it, and every "
            "index built with it reads passages the same way. Default: as the starting model records, else true."
        },
    )
    windows: bool | None = field(
        default=None,
        metadata={
            "help": "Embed a passage longer than the embedder reads (see --max_seq_length) as overlapping windows, "
            "scored by its best, when evaluating and in every index built with the trained model, which records "
            "it (false: read each passage's beginning only). Training rows read the beginning either way. "
            "Default: as the starting model records, else true."
        },
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={
            "help": "Tokens of a question or passage the embedder reads; the rest is cut off. Default: the model's "
            "own (256 for all-MiniLM-L6-v2, whose position table holds 512)."
        },
    )
    negatives_per_row: int = field(
        default=1,
        metadata={
            "help": "Hard negatives each training row carries (drawn from its question's), beside the batch's other "
            "passages. More give the loss more hard choices per step for more encoding per row."
        },
    )
    inverse_cloze: int = field(
        default=0,
        metadata={
            "help": "Pseudo-questions made from each database passage besides the QA records (inverse cloze: one "
            "of its sentences, to be matched with the rest of the passage). They teach the embedder the passages "
            "no question covers, and what tells an article's chunks apart. 0: none."
        },
    )
    loss: str = field(default="contrastive", metadata={"help": "Retriever loss name (see `rqa list-plugins`)."})
    loss_option: list[str] = field(default_factory=list, metadata={"help": "Loss option KEY=VALUE (repeatable)."})
    top_k: int = field(default=4, metadata={"help": "Passages retrieved per question when evaluating."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start over in an output directory that holds an earlier run."}
    )
    config: str | None = field(default=None, metadata={"help": "YAML or JSON file holding any of these flags."})

    # Defaults suited to the job (the parents' own are for generic training).
    output_dir: str | None = field(
        default="runs/retriever", metadata={"help": "Where the sentence-transformers model and results go."}
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Passes over the training questions."})
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Questions per batch: each is a negative for the others."}
    )
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps, or a share of all steps when below 1."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate: no, steps or epoch."})
    eval_steps: float | None = field(default=100, metadata={"help": "Evaluate every N steps."})
    eval_on_start: bool = field(default=True, metadata={"help": "Evaluate the base model at step 0 first."})
    save_steps: float = field(default=100, metadata={"help": "Save a checkpoint every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={"help": "Pin batches in page-locked memory. Default: on with a CUDA device, off on a CPU."},
    )
    batch_sampler: str = field(
        default="no_duplicates",
        metadata={"help": "Batch sampler; no_duplicates keeps a question's gold passage out of others' negatives."},
    )

    def __post_init__(self) -> None:
        if self.pooling_type is not None and self.pooling_type not in POOLING_TYPES:
            raise ValueError(f"--pooling_type must be one of {', '.join(POOLING_TYPES)}, got {self.pooling_type!r}")
        if not 0.0 <= self.hard_neg_ratio <= 1.0:
            raise ValueError(f"--hard_neg_ratio must be between 0 and 1, got {self.hard_neg_ratio}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"--temperature must be above 0, got {self.temperature}")
        if self.mine_hard_negatives < 0:
            raise ValueError(f"--mine_hard_negatives must be 0 or more, got {self.mine_hard_negatives}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(f"--max_seq_length must be at least 1, got {self.max_seq_length}")
        if self.inverse_cloze < 0:
            raise ValueError(f"--inverse_cloze must be 0 or more, got {self.inverse_cloze}")
        if self.negatives_per_row < 1:
            raise ValueError(f"--negatives_per_row must be at least 1, got {self.negatives_per_row}")
        if self.top_k < 1:
            raise ValueError(f"--top_k must be at least 1, got {self.top_k}")
        self.metric_for_best_model = map_metric_name(self.metric_for_best_model)
        settle_devices(self)
        settle_progress(self)
        super().__post_init__()


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser(RqaRetrieverTrainingArguments, prog="rqa train-retriever")
    repeatable_options(parser)
    return parser


def parse_retriever_args(argv: list[str]) -> RqaRetrieverTrainingArguments:
    """Parse ``rqa train-retriever`` flags; ``--config FILE`` supplies defaults that the command line overrides."""
    return parse_with_config(make_parser(), RqaRetrieverTrainingArguments, argv)


LOSS_FLAGS = ("temperature", "generator_model", "refresh_steps", "num_docs", "lm_temperature", "retrieve_temperature")


def loss_flags(args: RqaRetrieverTrainingArguments) -> dict[str, object]:
    """The loss options given as top-level flags (LocalRQA's way), by option name; unset ones left out."""
    return {name: getattr(args, name) for name in LOSS_FLAGS if getattr(args, name) is not None}
