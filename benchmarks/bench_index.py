"""Index build and reuse: rqa's dense-faiss index of the Faire database against SentenceTransformer alone.

The baseline is the embedder's own work on the same texts with the same settings (batch 64, normalised):
whatever rqa adds on top (fingerprinting the database, faiss, the manifest, the atomic write) shows in the
ratio. Reuse is a fresh retriever instance given the existing index directory, as a second ``rqa train`` or
``rqa evaluate`` run does; ``rqa index`` is also timed as a whole process.

    .venv/bin/python benchmarks/bench_index.py
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from typing import Any

from common import (
    CACHE_DIR,
    DATA_DIR,
    REPO_ROOT,
    Timer,
    documents,
    load_average,
    markdown_table,
    print_table,
    ratio,
    section_preamble,
    wait_for_quiet,
    write_section,
)

INDEX_DIR = CACHE_DIR / "bench-index"


def sentence_transformer_alone(texts: list[str], batch_size: int) -> tuple[float, float, Any]:
    """(load + encode seconds, encode-only seconds, vectors) with the embedder used directly."""
    from sentence_transformers import SentenceTransformer

    from rqa.models import resolve_embedder

    with Timer() as total:
        model = SentenceTransformer(resolve_embedder(None))
        with Timer() as encode:
            vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return total.seconds, encode.seconds, vectors


def stored_vector_difference(vectors: Any) -> float | None:
    """Largest gap between the vectors rqa stored and the baseline's: the index must hold the same embeddings."""
    import faiss
    import numpy as np

    path = INDEX_DIR / "index.faiss"  # the on-disk name rqa's dense retrievers document
    if not path.exists():
        return None
    index = faiss.read_index(str(path))
    return float(np.abs(index.reconstruct_n(0, index.ntotal) - vectors.astype(np.float32)).max())


def fresh_retriever() -> Any:
    from rqa.plugins import get_plugins

    return get_plugins()["retrievers"].create("dense-faiss", {})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no_write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    from rqa.models import resolve_embedder

    load_before = load_average()
    with Timer() as read_timer:
        docs = documents()
    texts = [doc.text for doc in docs]
    batch_size = fresh_retriever().batch_size
    # warm the page cache and the kernels once, so that whichever side runs first is not penalised
    SentenceTransformer(resolve_embedder(None)).encode(texts[:64], batch_size=batch_size)

    wait_for_quiet()
    print(f"SentenceTransformer.encode of {len(texts)} texts ...", flush=True)
    st_total, st_encode, vectors = sentence_transformer_alone(texts, batch_size)
    print(f"  {st_total:.1f} s; rqa dense-faiss build ...", flush=True)
    shutil.rmtree(INDEX_DIR, ignore_errors=True)
    wait_for_quiet()
    retriever = fresh_retriever()
    with Timer() as build_timer:
        built = retriever.build(docs, INDEX_DIR)
    print(f"  {build_timer.seconds:.1f} s; reuse ...", flush=True)
    reuser = fresh_retriever()
    with Timer() as reuse_timer:
        rebuilt = reuser.build(docs, INDEX_DIR)
    with Timer() as read_reuse_timer:
        fresh_retriever().build(documents(), INDEX_DIR)
    command = [str(REPO_ROOT / ".venv" / "bin" / "rqa"), "index", "--documents", str(DATA_DIR / "documents.pkl")]
    with Timer() as cli_timer:
        subprocess.run([*command, "--index", str(INDEX_DIR)], check=True, capture_output=True, cwd=REPO_ROOT)

    difference = stored_vector_difference(vectors)
    assert built and not rebuilt, "the first build must build and the second must reuse"

    columns = ["step", "seconds"]
    rows = [
        ["read documents.pkl (rqa.schema.read_documents)", f"{read_timer.seconds:.2f}"],
        ["SentenceTransformer load + encode (baseline)", f"{st_total:.1f}"],
        ["  of which encode", f"{st_encode:.1f}"],
        [
            "rqa dense-faiss build (load embedder, fingerprint, encode, faiss, atomic write)",
            f"{build_timer.seconds:.1f}",
        ],
        ["rqa reuse: new retriever, existing index", f"{reuse_timer.seconds:.3f}"],
        ["rqa reuse including read_documents", f"{read_reuse_timer.seconds:.3f}"],
        ["`rqa index` process, reuse (startup, read, check)", f"{cli_timer.seconds:.2f}"],
    ]
    summary = [
        ["rqa build ÷ SentenceTransformer load + encode", ratio(build_timer.seconds, st_total)],
        ["rqa build ÷ SentenceTransformer encode only", ratio(build_timer.seconds, st_encode)],
        ["rqa reuse ÷ rqa build", ratio(reuse_timer.seconds, build_timer.seconds)],
        ["max |rqa vector − SentenceTransformer vector|", "n/a" if difference is None else f"{difference:.2e}"],
    ]
    print_table(f"index of {len(docs)} documents", columns, rows)
    print_table("comparison", ["", "value"], summary)
    if args.no_write:
        return
    body = "\n\n".join(
        [
            "## Index build and reuse",
            section_preamble(load_before),
            f"documents.pkl: {len(docs)} documents after rqa drops duplicates; all-MiniLM-L6-v2 (embedded), batch "
            f"{batch_size}, normalised, CPU. One run each, after a warm-up encode of 64 texts.",
            markdown_table(columns, rows),
            markdown_table(["", "value"], summary),
        ]
    )
    write_section("bench_index", body)


if __name__ == "__main__":
    main(sys.argv[1:])
