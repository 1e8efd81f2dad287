"""End-to-end evaluation: rqa's batched ``E2EEvaluator`` against a plain per-question loop.

Both answer the same Faire eval questions with the same model, retriever (dense-faiss, top 4, index cached
under ``benchmarks/.cache/``), prompt ids (``ExampleEncoder.prompt_ids``), greedy decoding and stop tokens; the
loop is what a user writes by hand: retrieve one question, generate one prompt. Greedy answers should be
identical; every mismatch is listed.

    .venv/bin/python benchmarks/bench_eval.py                     # 73 questions, batches of 16 and 32
    .venv/bin/python benchmarks/bench_eval.py --questions 24
    .venv/bin/python benchmarks/bench_eval.py --batch_size 16 --lookup 4 10   # the loop with prompt lookup too
    .venv/bin/python benchmarks/bench_eval.py --batch_size 32 --linear_kernels auto default
    .venv/bin/python benchmarks/bench_eval.py --batch_size 32 --model runs/example   # a fine-tuned model

Every path's prompt processing (its forward passes of more than one token a row) is timed on its own. Identical
answers leave rqa no cheaper way through the prompts than computing them in full (once, where prompts begin alike),
so the loop's total ÷ rqa's prompt seconds is the most that any faster decoding could give: the ceiling under the
table's speed-ups.

``--lookup K``: the loop again with transformers' prompt-lookup decoding (K tokens drafted from the prompt and
verified in one forward pass), its answers compared with the plain loop's and its tokens per forward pass counted.
``--linear_kernels``: rqa once per setting of ``RQA_CPU_LINEAR`` (``auto`` picks oneDNN where it measures faster;
``default`` keeps PyTorch's own); the loop always runs PyTorch's own kernels.
``--shared_beginnings``: rqa with prompts that begin alike computing their common beginning once (``on``, rqa's
way) and with every prompt computed whole (``off``); the prompt tokens each computed are counted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any

from common import (
    CACHE_DIR,
    Timer,
    chatml_encoder,
    documents,
    eval_examples,
    generator_path,
    load_average,
    markdown_table,
    print_table,
    ratio,
    section_preamble,
    wait_for_quiet,
    write_section,
)

INDEX_DIR = CACHE_DIR / "index-dense-faiss"


class PromptClock:
    """A model's forward passes, and the seconds and tokens of its prompt passes: those of more than one input
    token a row.

    Decoding steps feed one token a row; a prompt (or what follows its stored beginning) comes in whole. A batch
    of one that drafts tokens from its prompt verifies them in forwards of several tokens, which count here too.
    """

    def __init__(self, model: Any) -> None:
        self.seconds, self.tokens, self.forwards = 0.0, 0, 0
        self._began: float | None = None
        self._hooks = [
            model.register_forward_pre_hook(self._start, with_kwargs=True),
            model.register_forward_hook(self._stop, with_kwargs=True),
        ]

    def _start(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.forwards += 1
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            self.tokens += ids.numel()
            self._began = time.perf_counter()

    def _stop(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self._began is not None:
            self.seconds += time.perf_counter() - self._began
            self._began = None

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def per_question_loop(
    model: Any,
    encoder: Any,
    retriever: Any,
    examples: list[Any],
    top_k: int,
    max_new_tokens: int,
    lookup: int | None = None,
) -> dict[str, Any]:
    """The hand-written baseline: one retrieval, one unpadded ``generate`` call per question.

    ``lookup``: transformers' prompt-lookup decoding with that many drafted tokens; the forward passes are counted,
    so ``tokens_per_forward`` says how many tokens each pass gave (1.0 without drafting)."""
    import torch

    from rqa.generation import answer_text, greedy_settings

    tokenizer, end_of_turn = encoder.tokenizer, encoder.formatter.end_of_turn
    settings = greedy_settings(tokenizer, end_of_turn, max_new_tokens)
    if lookup:
        settings["prompt_lookup_num_tokens"] = lookup
    answers, retrieved, retrieval_s, generation_s = [], [], 0.0, 0.0
    new_tokens = 0
    clock = PromptClock(model)
    model.eval()
    for example in examples:
        with Timer() as timer:
            hits = retriever.retrieve([example.question], top_k)[0]
        retrieval_s += timer.seconds
        with Timer() as timer:
            ids = encoder.prompt_ids(example, [doc for doc, _ in hits])
            with torch.inference_mode():
                output = model.generate(
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                    **settings,
                )
            answers.append(answer_text(tokenizer, output[0, len(ids) :], end_of_turn))
        generation_s += timer.seconds
        new_tokens += output.shape[1] - len(ids)
        retrieved.append([doc.page_content for doc, _ in hits])
    clock.remove()
    return {
        "answers": answers,
        "retrieved": retrieved,
        "retrieval_s": retrieval_s,
        "generation_s": generation_s,
        "tokens_per_forward": new_tokens / max(clock.forwards, 1),
        "prompt_tokens": clock.tokens,
        "prompt_s": clock.seconds,
        "new_tokens": new_tokens,
    }


def rqa_evaluator(
    model: Any, encoder: Any, retriever: Any, examples: list[Any], top_k: int, max_new_tokens: int, batch_size: int
) -> dict[str, Any]:
    """rqa's path: batched retrieval once, similar-length batches, unpadded prompts and batched decoding on CPU."""
    from rqa.evaluation import E2EEvaluator

    output_dir = CACHE_DIR / "eval-output"
    evaluator = E2EEvaluator(
        examples,
        encoder=encoder,
        retriever=retriever,
        metrics={},  # the loop scores nothing; scoring is timed separately below
        top_k=top_k,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        output_dir=output_dir,
    )
    prompts = PromptClock(model)
    with Timer() as timer:
        evaluator.evaluate_model(model, name="bench")
    prompts.remove()
    rows = [json.loads(line) for line in (output_dir / "bench-predictions.jsonl").read_text().splitlines()]
    retrieval_s = evaluator.retrieve().seconds_per_question * len(examples)
    return {
        "seconds": timer.seconds,
        "retrieval_s": retrieval_s,
        "answers": [row["generated_answer"] for row in rows],
        "retrieved": [[doc["page_content"] for doc in row["retrieved_docs"]] for row in rows],
        "rows": rows,
        "prompt_tokens": prompts.tokens,
        "prompt_s": prompts.seconds,
    }


def linear_kernels(model: Any) -> str:
    """Which fp32 linear kernels rqa's generation uses for this model under the current ``RQA_CPU_LINEAR``."""
    from rqa.onednn import onednn_linears

    with onednn_linears(model) as routed:
        return "oneDNN" if routed else "PyTorch's default"


def scoring_seconds(rows: list[dict[str, Any]], top_k: int) -> float:
    """What every installed metric adds on top (rqa's default ``--metrics all``)."""
    from rqa.evaluation import score_rows
    from rqa.pipeline import metric_factories, metric_names

    metrics = metric_factories(metric_names(["all"]), top_k)
    with Timer() as timer:
        score_rows(rows, metrics)
    return timer.seconds


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=73, help="first N eval questions")
    parser.add_argument(
        "--batch_size", type=int, nargs="+", default=[16, 32], help="rqa's generation batch sizes to measure"
    )
    parser.add_argument(
        "--lookup", type=int, nargs="*", default=[], help="also the loop with prompt-lookup decoding, K drafted tokens"
    )
    parser.add_argument(
        "--linear_kernels", nargs="+", choices=["auto", "onednn", "default"], default=["auto"],
        help="RQA_CPU_LINEAR settings to measure rqa with",
    )  # fmt: skip
    parser.add_argument(
        "--shared_beginnings", nargs="+", choices=["on", "off"], default=["on"],
        help="rqa with prompts that begin alike computing the common part once (on) or each whole (off)",
    )  # fmt: skip
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--top_k", type=int, default=4)
    parser.add_argument("--max_seq_length", type=int, default=2048, help="prompt budget (rqa train's default)")
    parser.add_argument(
        "--model", help="a fine-tuned generator's folder (chatml prompts, as rqa train writes it); "
        "default: the embedded SmolLM2-135M-Instruct. Written to its own section"
    )  # fmt: skip
    parser.add_argument("--no_write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    import torch

    from rqa import shared_prefixes
    from rqa.models import load_generator
    from rqa.plugins import get_plugins

    load_before = load_average()
    examples = eval_examples(args.questions)
    encoder = chatml_encoder(args.max_seq_length)
    model = load_generator(args.model or generator_path(), dtype=torch.float32)
    retriever = get_plugins()["retrievers"].create("dense-faiss", {})
    retriever.build(documents(), INDEX_DIR)
    # warm both shared pieces first, so that neither side pays the embedder's load or the first generate call
    retriever.retrieve(["warm-up question"], 1)
    with torch.inference_mode():
        model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False, pad_token_id=0)

    runs = []
    default_minimum = shared_prefixes.MIN_SHARED_TOKENS
    for batch_size, kernels, sharing in itertools.product(args.batch_size, args.linear_kernels, args.shared_beginnings):
        os.environ["RQA_CPU_LINEAR"] = kernels
        shared_prefixes.MIN_SHARED_TOKENS = default_minimum if sharing == "on" else sys.maxsize
        label = f"batch {batch_size}, {linear_kernels(model)} linears" + (", prompts whole" if sharing == "off" else "")
        wait_for_quiet()
        print(f"rqa E2EEvaluator, {label}, {len(examples)} questions ...", flush=True)
        batched = rqa_evaluator(model, encoder, retriever, examples, args.top_k, args.max_new_tokens, batch_size)
        batched["load"] = os.getloadavg()[0]
        print(
            f"  {batched['seconds']:.1f} s, {batched['prompt_tokens']} prompt tokens computed in "
            f"{batched['prompt_s']:.1f} s",
            flush=True,
        )
        runs.append((label, batched))
    shared_prefixes.MIN_SHARED_TOKENS = default_minimum
    os.environ.pop("RQA_CPU_LINEAR")
    wait_for_quiet()
    print("per-question loop ...", flush=True)
    with Timer() as loop_timer:
        loop = per_question_loop(model, encoder, retriever, examples, args.top_k, args.max_new_tokens)
    load_after_loop = os.getloadavg()[0]
    print(f"  {loop_timer.seconds:.1f} s, prompts {loop['prompt_s']:.1f} s (load {load_after_loop:.2f})", flush=True)
    lookups = []
    for drafted in args.lookup:
        wait_for_quiet()
        print(f"per-question loop, prompt lookup {drafted} ...", flush=True)
        with Timer() as timer:
            looked = per_question_loop(model, encoder, retriever, examples, args.top_k, args.max_new_tokens, drafted)
        looked.update(seconds=timer.seconds, load=os.getloadavg()[0])
        print(f"  {timer.seconds:.1f} s, {looked['tokens_per_forward']:.2f} tokens per forward", flush=True)
        lookups.append((drafted, looked))
    scoring_s = scoring_seconds(runs[0][1]["rows"], args.top_k)

    columns = ["path", "total s", "retrieval s", "generation + rest s", "prompt tokens computed", "prompts s",
               "speed-up", "ceiling", "same answers", "load at end"]  # fmt: skip
    rows, mismatches = [], []
    for label, batched in runs:
        same = sum(a == b for a, b in zip(batched["answers"], loop["answers"], strict=True))
        mismatches += [
            (label, i, examples[i].question, mine, theirs)
            for i, (mine, theirs) in enumerate(zip(batched["answers"], loop["answers"], strict=True))
            if mine != theirs
        ]
        rows.append(
            [
                f"rqa E2EEvaluator ({label})",
                f"{batched['seconds']:.1f}",
                f"{batched['retrieval_s']:.2f}",
                f"{batched['seconds'] - batched['retrieval_s']:.1f}",
                f"{batched['prompt_tokens']:,}",
                f"{batched['prompt_s']:.1f}",
                ratio(loop_timer.seconds, batched["seconds"]),
                ratio(loop_timer.seconds, batched["prompt_s"]),
                f"{same}/{len(examples)}",
                f"{batched['load']:.2f}",
            ]
        )
    rows.append(
        [
            "per-question loop",
            f"{loop_timer.seconds:.1f}",
            f"{loop['retrieval_s']:.2f}",
            f"{loop_timer.seconds - loop['retrieval_s']:.1f}",
            f"{loop['prompt_tokens']:,}",
            f"{loop['prompt_s']:.1f}",
            "1.00×",
            "-",
            "-",
            f"{load_after_loop:.2f}",
        ]
    )
    for drafted, looked in lookups:
        same = sum(a == b for a, b in zip(looked["answers"], loop["answers"], strict=True))
        rows.append(
            [
                f"per-question loop, prompt lookup {drafted} ({looked['tokens_per_forward']:.2f} tokens/forward)",
                f"{looked['seconds']:.1f}",
                f"{looked['retrieval_s']:.2f}",
                f"{looked['seconds'] - looked['retrieval_s']:.1f}",
                "-",
                "-",
                ratio(loop_timer.seconds, looked["seconds"]),
                "-",
                f"{same}/{len(examples)}",
                f"{looked['load']:.2f}",
            ]
        )
    same_retrieval = min(
        sum(a == b for a, b in zip(batched["retrieved"], loop["retrieved"], strict=True)) for _, batched in runs
    )
    summary = [
        ["identical top-k passages (every batch size)", f"{same_retrieval}/{len(examples)}"],
        ["scoring with every metric (not in the totals)", f"{scoring_s:.2f} s"],
        ["tokens per forward pass, plain loop (prefill included)", f"{loop['tokens_per_forward']:.2f}"],
        ["new tokens per answer (mean; the limit is " + str(args.max_new_tokens) + ")",
         f"{loop['new_tokens'] / len(examples):.1f}"],
        ["the loop's time in prompt processing", f"{loop['prompt_s'] / loop_timer.seconds:.0%}"],
    ]  # fmt: skip
    print_table(f"end-to-end evaluation, {len(examples)} Faire eval questions", columns, rows)
    print_table("comparison", ["", "value"], summary)
    for label, index, question, mine, theirs in mismatches:
        print(f"mismatch #{index} ({label}): {question!r}\n  rqa:  {mine!r}\n  loop: {theirs!r}")
    if args.no_write:
        return
    mismatch_lines = [
        f"- #{index} ({label}) {question!r}: rqa `{mine[:160]!r}` vs loop `{theirs[:160]!r}`"
        for label, index, question, mine, theirs in mismatches
    ]
    model_name = f"a fine-tuned SmolLM2-135M-Instruct (`{args.model}`)" if args.model else "SmolLM2-135M-Instruct"
    body = "\n\n".join(
        [
            "## End-to-end evaluation" + (", a fine-tuned model" if args.model else ""),
            section_preamble(load_before),
            f"First {len(examples)} of the 73 Faire eval questions; dense-faiss (all-MiniLM-L6-v2) top {args.top_k} "
            f"over documents.pkl, chatml prompts, greedy, up to {args.max_new_tokens} new tokens, fp32, "
            f"{model_name}. Every path shares one loaded model, retriever and index, warmed up first; "
            "'speed-up' is the loop's total time ÷ that path's; 'prompts s' is the time of its prompt forward passes, "
            "and 'ceiling' the loop's total ÷ that, the speed-up that path would reach if its decoding took no time.",
            markdown_table(columns, rows),
            markdown_table(["", "value"], summary),
            "Answers that differ:\n\n" + "\n".join(mismatch_lines) if mismatch_lines else "Every answer is identical.",
        ]
    )
    write_section("bench_eval:fine-tuned" if args.model else "bench_eval", body)


if __name__ == "__main__":
    main(sys.argv[1:])
