"""Hybrid retrieval: several retrievers' rankings fused by reciprocal rank (RRF, Cormack et al. 2009).

Dense and lexical retrieval fail on different questions. An embedder places an article's chunks close together
and misses rare words (a product or integration name); BM25 matches those words exactly and knows nothing of
paraphrase. Each passage scores ``sum(weight / (rank_constant + rank))`` over the members' top ``depth`` lists,
so a passage near the top of either list comes first, and one that both rank well first of all. Ranks, not
scores, are fused: a cosine similarity and a BM25 score have no common scale.

The members are retrievers from the registry, by name, each with its defaults (an embedding model goes to those
that take one). The index directory holds one folder per member, each that member's own index, under one
manifest that records all of theirs: a change to any member rebuilds them all, atomically, as any index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rqa.errors import RqaError
from rqa.indexing import IndexedRetriever
from rqa.retrieval import Hit
from rqa.schema import Document


class HybridRetriever(IndexedRetriever):
    """Reciprocal-rank fusion of member retrievers that keep index directories (``IndexedRetriever``)."""

    name = "hybrid"

    def __init__(
        self,
        members: dict[str, IndexedRetriever],
        weights: Sequence[float],
        rank_constant: float = 60.0,
        depth: int = 50,
    ) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("a hybrid retriever fuses at least two members")
        if len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        if any(weight < 0 for weight in weights) or not any(weights):
            raise ValueError("weights must be >= 0, and one at least above 0")
        if rank_constant < 0:
            raise ValueError(f"rank_constant must be >= 0, got {rank_constant}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        for name, member in members.items():
            if not isinstance(member, IndexedRetriever):
                raise ValueError(f"member '{name}' keeps no index directory (not an IndexedRetriever): cannot be fused")
        self.members, self.weights = members, list(weights)
        self.rank_constant, self.depth = float(rank_constant), int(depth)
        self.index_files = tuple(members)  # one folder per member

    def manifest(self, documents: Sequence[Document]) -> dict[str, Any]:
        return {
            "retriever": self.name,
            "members": {name: member.manifest(documents) for name, member in self.members.items()},
        }

    def settle_manifest(self, expected: dict[str, Any]) -> dict[str, Any]:
        members = {name: member.settle_manifest(expected["members"][name]) for name, member in self.members.items()}
        return {**expected, "members": members}

    def index(self, documents: Sequence[Document], progress: bool) -> None:
        for member in self.members.values():
            member.documents = list(documents)
            member.index(member.documents, progress)

    def save(self, directory: Path) -> None:
        for name, member in self.members.items():
            (directory / name).mkdir()
            member.save(directory / name)

    def load(self, directory: Path, expected: dict[str, Any]) -> str | None:
        for name, member in self.members.items():
            member.documents = self.documents
            problem = member.load(directory / name, expected["members"][name])
            if problem is not None:
                return f"its {name} index: {problem}"
        return None

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """The top ``k`` of the fused ranking, best first, with the fused score."""
        if not self.documents:
            raise RqaError("the retriever has no index: call build() first")
        depth = max(self.depth, k)
        rankings = [member.retrieve(queries, depth) for member in self.members.values()]
        fused = []
        for per_member in zip(*rankings, strict=True):
            scores: dict[str, float] = {}
            documents: dict[str, Document] = {}
            for weight, hits in zip(self.weights, per_member, strict=True):
                for rank, (document, _) in enumerate(hits, start=1):
                    key = document.page_content
                    scores[key] = scores.get(key, 0.0) + weight / (self.rank_constant + rank)
                    documents.setdefault(key, document)
            best = sorted(scores, key=lambda key: -scores[key])[:k]  # stable: ties keep the first member's order
            fused.append([(documents[key], scores[key]) for key in best])
        return fused
