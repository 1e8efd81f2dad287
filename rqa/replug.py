"""Distilling the generator's judgement into the retriever (REPLUG's LM-supervised retrieval; LocalRQA's RPG).

For each training question the current retriever proposes ``num_docs`` passages (the gold one always among them).
The generator scores each by how likely it makes the gold answer; the retriever is trained so that its softmax over
those passages matches the generator's (KL divergence, each side with its own temperature). The index is rebuilt
with the model in training every ``refresh_steps`` optimizer steps.

What rqa adds to LocalRQA's trainer: the generator reads each passage through the same formatter and tokenization
as ``rqa train`` (so it scores passages the way it will read them), its scores are computed in padded batches and
cached (the generator is frozen: a (question, passage) pair is scored once however often it is retrieved), and
the loss is an ordinary sentence-transformers loss, so batching, schedules, checkpoints and several processes come
from sentence-transformers' trainer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rqa.data import PaddingCollator
from rqa.retrieval import DenseFaissRetriever, passage_text
from rqa.schema import Document, Example

log = logging.getLogger("rqa")
UNSCORABLE = -1e4  # an answer too long to fit with its passage: least likely, yet finite so a softmax stays defined


class AnswerLikelihood:
    """Mean log-probability of an example's gold answer given one passage, under a frozen generator."""

    def __init__(
        self, generator: str | None, formatter: str, max_seq_length: int, batch_size: int, device: Any = None
    ) -> None:
        from rqa.data import ExampleEncoder
        from rqa.models import load_generator, load_tokenizer, resolve_generator
        from rqa.plugins import get_plugins

        path = resolve_generator(generator)
        self.tokenizer = load_tokenizer(path)
        built = get_plugins()["formatters"].build(formatter, {}, tokenizer=self.tokenizer)
        self.encoder = ExampleEncoder(self.tokenizer, built, max_seq_length=max_seq_length)
        self.model = load_generator(path, log=log.info).eval()
        if device is not None:
            self.model.to(device)
        self.batch_size = batch_size
        self.cache: dict[tuple[int, str], float] = {}
        self.scored_pairs = 0

    def scores(self, examples: Sequence[Example], keys: Sequence[int], passages: Sequence[Sequence[Document]]) -> Any:
        """``[len(keys), k]`` scores; ``keys`` name the examples in the cache (their training-row index)."""
        wanted = [
            (key, example, document)
            for key, example, documents in zip(keys, examples, passages, strict=True)
            for document in documents
            if (key, document.page_content) not in self.cache
        ]
        for start in range(0, len(wanted), self.batch_size):
            chunk = wanted[start : start + self.batch_size]
            values = self._score([(example, document) for _, example, document in chunk])
            for (key, _, document), value in zip(chunk, values, strict=True):
                self.cache[(key, document.page_content)] = value
            self.scored_pairs += len(chunk)
        return torch.tensor(
            [
                [self.cache[(key, d.page_content)] for d in documents]
                for key, documents in zip(keys, passages, strict=True)
            ]
        )

    @torch.no_grad()
    def _score(self, pairs: Sequence[tuple[Example, Document]]) -> list[float]:
        encoded = [self.encoder.encode(example, [document]) for example, document in pairs]
        rows = [e for e in encoded if e is not None]
        if not rows:
            return [UNSCORABLE] * len(pairs)
        batch = PaddingCollator(self.tokenizer.pad_token_id)(rows)
        device = self.model.device
        logits = self.model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits.float()
        targets = batch["labels"][:, 1:].to(device)
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        supervised = targets != -100
        means = ((picked * supervised).sum(-1) / supervised.sum(-1).clamp(min=1)).tolist()
        values = iter(means)
        return [next(values) if e is not None else UNSCORABLE for e in encoded]


class ReplugLoss(nn.Module):
    """KL(generator's distribution over the retrieved passages ‖ the retriever's), per question, batch-averaged."""

    def __init__(
        self,
        model: Any,
        likelihood: AnswerLikelihood,
        num_docs: int,
        lm_temperature: float,
        retrieve_temperature: float,
        refresh_steps: int,
        embed_urls: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.embed_urls = embed_urls  # passages are read as every retriever built with the trained model reads them
        self.likelihood = likelihood
        self.num_docs, self.refresh_steps = num_docs, refresh_steps
        self.lm_temperature, self.retrieve_temperature = lm_temperature, retrieve_temperature
        self.examples: list[Example] = []
        self.documents: list[Document] = []
        self.candidates: list[list[Document]] = []

    def training_data(self, examples: Sequence[Example], documents: Sequence[Document]) -> Any:
        """One row per question: its text and its index (the ``label`` column, which reaches the loss as ``labels``)."""
        from datasets import Dataset

        self.examples, self.documents = list(examples), list(documents)
        self.num_docs = min(self.num_docs, len(self.documents))
        return Dataset.from_dict({"anchor": [e.question for e in examples], "label": list(range(len(examples)))})

    def refresh(self, model: Any) -> None:
        """Index the database with ``model`` as it is now and take every question's candidates from it."""
        began = time.perf_counter()
        retriever = DenseFaissRetriever.in_memory(model, self.documents, embed_urls=self.embed_urls)
        hits = retriever.retrieve([e.question for e in self.examples], self.num_docs)
        self.candidates = [with_gold(example, [d for d, _ in ranked], self.num_docs) for example, ranked in
                           zip(self.examples, hits, strict=True)]  # fmt: skip
        log.info("replug: refreshed the index and %d questions' passages in %.0f s", len(hits),
                 time.perf_counter() - began)  # fmt: skip

    def forward(self, sentence_features: Sequence[dict[str, Any]], labels: Any) -> Any:
        keys = [int(k) for k in labels.tolist()]
        passages = [self.candidates[k] for k in keys]
        queries = self.model(sentence_features[0])["sentence_embedding"]
        texts = [passage_text(d, self.embed_urls) for documents in passages for d in documents]
        tokenized = self.model.tokenize(texts)
        tokenized = {k: v.to(queries.device) if isinstance(v, torch.Tensor) else v for k, v in tokenized.items()}
        keys_embedded = self.model(tokenized)["sentence_embedding"].view(len(keys), self.num_docs, -1)
        similarity = torch.cosine_similarity(queries.unsqueeze(1), keys_embedded, dim=-1)
        lm = self.likelihood.scores([self.examples[k] for k in keys], keys, passages).to(queries.device)
        target = torch.softmax(lm / self.lm_temperature, dim=-1)
        predicted = torch.log_softmax(similarity / self.retrieve_temperature, dim=-1)
        return nn.functional.kl_div(predicted, target, reduction="batchmean")


def with_gold(example: Example, ranked: list[Document], count: int) -> list[Document]:
    """``count`` passages with the example's first gold passage first: moved there when retrieved, else put in place
    of the last one, as LocalRQA does, so each question's distribution always includes the passage that answers it."""
    gold = example.gold_docs[0]
    others = [d for d in ranked if d.page_content != gold.page_content]
    return [gold, *others][:count]
