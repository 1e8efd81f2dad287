"""Built-in retriever losses for ``rqa train-retriever``.

A retriever loss is a ``torch.nn.Module`` that sentence-transformers' trainer calls with the tokenized columns
(question, gold passage, and a hard negative where the batch has one); see ``rqa.contracts.RetrieverLoss``.
"""

from __future__ import annotations

from typing import Any

from rqa.hookspecs import hookimpl


def contrastive(model: Any, temperature: float = 0.05) -> Any:
    """InfoNCE over in-batch and hard negatives with a temperature, as LocalRQA's CTL (option: temperature)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0, got {temperature}")
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    # cosine similarities scaled by 1/temperature, softmax cross-entropy against every passage in the batch
    return MultipleNegativesRankingLoss(model, scale=1.0 / temperature)


@hookimpl
def register_retriever_losses(register) -> None:
    register("contrastive", contrastive)
