"""Built-in retriever losses for ``rqa train-retriever``.

A retriever loss is a ``torch.nn.Module`` that sentence-transformers' trainer calls with the tokenized columns
(question, gold passage, and a hard negative where the batch has one); see ``rqa.contracts.RetrieverLoss``.
"""

from __future__ import annotations

import os
from typing import Any

from rqa.hookspecs import hookimpl

DIRECTIONS = ("query_to_doc", "doc_to_query", "query_to_query", "doc_to_doc")
HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")


def contrastive(
    model: Any,
    temperature: float = 0.05,
    mini_batch_size: int = 0,
    directions: tuple[str, ...] = ("query_to_doc",),
    hardness_mode: str | None = None,
    hardness_strength: float = 0.0,
    guide: str | None = None,
    guide_margin: float = 0.0,
) -> Any:
    """InfoNCE over in-batch and hard negatives with a temperature, as LocalRQA's CTL (options: temperature,
    mini_batch_size, directions, hardness_mode, hardness_strength, guide, guide_margin).

    ``directions`` adds sentence-transformers' other softmax terms (``doc_to_doc`` also pushes a question's gold
    passage away from the batch's other passages, its own hard negatives excepted); ``hardness_mode`` with
    ``hardness_strength`` raises the weight of the negatives the model already finds similar. ``guide`` filters
    false negatives (GISTEmbed): a negative that a guide model (``base``: a frozen copy of the starting model, or a
    model name or path) scores above the gold passage minus ``guide_margin`` is left out, since a sibling passage
    often answers the question too."""
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0, got {temperature}")
    if mini_batch_size < 0:
        raise ValueError(f"mini_batch_size must be 0 (off) or more, got {mini_batch_size}")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or "query_to_doc" not in directions:
        raise ValueError(f"directions must include query_to_doc and be among {', '.join(DIRECTIONS)}; got "
                         f"{';'.join(directions)}")  # fmt: skip
    if hardness_mode is not None and hardness_mode not in HARDNESS_MODES:
        raise ValueError(f"hardness_mode must be one of {', '.join(HARDNESS_MODES)}, got {hardness_mode!r}")
    if hardness_strength < 0:
        raise ValueError(f"hardness_strength must be 0 or more, got {hardness_strength}")
    if guide is not None and (hardness_mode is not None or "doc_to_query" in directions):
        raise ValueError("guide filters query_to_doc, query_to_query and doc_to_doc negatives; it does not combine "
                         "with hardness_mode or doc_to_query")  # fmt: skip
    from sentence_transformers.sentence_transformer import losses

    gather = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if guide is not None:
        options = {
            "guide": _guide_model(model, guide),
            "temperature": temperature,
            "margin": guide_margin,
            "contrast_anchors": "query_to_query" in directions,
            "contrast_positives": "doc_to_doc" in directions,
            "gather_across_devices": gather,
        }
        if mini_batch_size:
            return losses.CachedGISTEmbedLoss(model, mini_batch_size=mini_batch_size, **options)
        return losses.GISTEmbedLoss(model, **options)
    # cosine similarities scaled by 1/temperature, softmax cross-entropy against every passage in the batch, and
    # under several processes (torchrun sets WORLD_SIZE) against every process's passages, gathered
    options = {
        "scale": 1.0 / temperature,
        "gather_across_devices": gather,
        "directions": tuple(directions),
        "hardness_mode": hardness_mode,
        "hardness_strength": hardness_strength,
    }
    if mini_batch_size:  # GradCache: a large batch's negatives in the memory of a mini-batch, for ~20 % more time
        return losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini_batch_size, **options)
    return losses.MultipleNegativesRankingLoss(model, **options)


def _guide_model(model: Any, guide: str) -> Any:
    """The frozen model that judges false negatives: a copy of ``model`` as it starts (``base``), or another one."""
    import copy

    if guide == "base":
        judge = copy.deepcopy(model)
    else:
        from rqa.retriever_training import load_embedder

        judge = load_embedder(guide, None).to(model.device)
    judge.requires_grad_(False)
    return judge.eval()


def replug(
    model: Any,
    generator_model: str | None = None,
    formatter: str = "auto",
    num_docs: int = 8,
    lm_temperature: float = 0.1,
    retrieve_temperature: float = 0.1,
    refresh_steps: int = 50,
    max_seq_length: int = 1024,
    batch_size: int = 8,
    embed_urls: bool = True,
) -> Any:
    """Distil the generator's likelihood of the gold answer over retrieved passages into the retriever (REPLUG, RPG)."""
    for name, value in (("lm_temperature", lm_temperature), ("retrieve_temperature", retrieve_temperature)):
        if not value > 0:
            raise ValueError(f"{name} must be above 0, got {value}")
    for name, value in (("num_docs", num_docs), ("refresh_steps", refresh_steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    from rqa.replug import AnswerLikelihood, ReplugLoss

    likelihood = AnswerLikelihood(generator_model, formatter, max_seq_length, batch_size, device=model.device)
    return ReplugLoss(model, likelihood, num_docs, lm_temperature, retrieve_temperature, refresh_steps, embed_urls)


@hookimpl
def register_retriever_losses(register) -> None:
    register("contrastive", contrastive)
    register("replug", replug)
