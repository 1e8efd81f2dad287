"""Batched greedy generation for evaluation and the assistant: the same answers as one prompt at a time, faster.

On a GPU, a left-padded batch goes through ``generate`` as it is. On a CPU, each prompt is prefilled alone and
the batch decodes from the assembled cache, dropping rows whose answer has ended (``rqa.decoding``), each row's
attention reading only its own span of the cache (``rqa.span_attention``); prompts that begin alike (the
instruction, the same first passage) compute the common beginning once (``rqa.shared_prefixes``). Prompts are
batched longest first among similar lengths, so padding stays small.

Under several processes (``synced``) every rank makes the same forward and ``generate`` calls in the same order,
which sharded weights (FSDP, DeepSpeed ZeRO-3) need: each forward gathers the weights from every rank.
``lockstep_batches`` gives every rank as many batches of as many rows.

A ``StopFlag`` abandons the work (``StopRequested``) before every batch, prompt and decode segment, and a
stopping criterion ends the current ``generate`` call at the next step. ``on_tokens`` hears every row's new tokens
after every step (a server streams them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from rqa.decoding import (
    TokenFeed,
    can_assemble_cache,
    decode_alone_with_lookup,
    decode_dropping_finished_rows,
    prefilled_cache,
    stop_criterion,
)
from rqa.onednn import onednn_linears
from rqa.shared_prefixes import SharedPrefixes
from rqa.span_attention import own_span_attention

if TYPE_CHECKING:
    from rqa.signals import StopFlag


log = logging.getLogger("rqa")

PROMPT_LOOKUP_TOKENS = 10  # tokens a lone prompt drafts from its own text per forward pass (0: off)


def stop_token_ids(tokenizer: Any, end_of_turn: str) -> tuple[list[int], list[str]]:
    """Token ids that end a reply, plus stop strings when the end of turn is not a single token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    strings: list[str] = []
    if end_of_turn:
        encoded = tokenizer(end_of_turn, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.add(encoded[0])
        else:
            strings.append(end_of_turn)
    return sorted(ids), strings


def greedy_settings(tokenizer: Any, end_of_turn: str, max_new_tokens: int) -> dict[str, Any]:
    """``generate`` arguments for greedy replies that stop at the format's end of turn."""
    eos_ids, stop_strings = stop_token_ids(tokenizer, end_of_turn)
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "eos_token_id": eos_ids,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
        "stop_strings": stop_strings or None,
        "tokenizer": tokenizer if stop_strings else None,
    }


def answer_text(tokenizer: Any, new_ids: Any, end_of_turn: str) -> str:
    """The reply in generated ids: special tokens dropped, cut where the format's end of turn begins."""
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    if end_of_turn and end_of_turn in text:
        text = text[: text.index(end_of_turn)]
    return text.strip()


def length_batches(lengths: Sequence[int], batch_size: int, max_padding: float = 0.15) -> list[list[int]]:
    """Indices of prompts grouped longest first into batches of similar length.

    Every row of a batch is computed at the longest one's length (the whole prompt when prompts are processed
    padded, the attention over the cache when only decoding is batched): a batch closes early when the next prompt
    would make more than ``max_padding`` of it padding.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if current:
            real = sum(lengths[i] for i in current) + lengths[index]
            padded = (len(current) + 1) * lengths[current[0]]
            if len(current) == batch_size or 1 - real / padded > max_padding:
                batches.append(current)
                current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@dataclass
class RankBatches:
    """One process's part of a generation that every process runs in lockstep."""

    batches: list[list[int]]  # indices into the prompts; every rank has as many batches, each of as many rows
    owned: list[int]  # the prompts whose answers this rank reports; its other rows are fillers


def lockstep_batches(
    lengths: Sequence[int], batch_size: int, world: int, max_padding: float = 0.15
) -> list[RankBatches]:
    """Every rank's batches, such that all ranks run as many batches, each of as many rows.

    Prompts of similar length are batched across all ranks (``world x batch_size`` at a time) and dealt out
    round-robin, so a batch costs about the same on every rank; a share one row short is topped up with the
    batch's shortest prompt, answered twice, reported once. With one rank these are ``length_batches``.
    """
    ranks = [RankBatches([], []) for _ in range(world)]
    for batch in length_batches(lengths, batch_size * world, max_padding):
        rows = -(-len(batch) // world)
        for rank, part in enumerate(ranks):
            share = batch[rank::world]
            part.owned += share
            part.batches.append(share + [batch[-1]] * (rows - len(share)))
    return ranks


def padding_allowed(model: Any) -> float:
    """The share of a batch that may be padding: half on a CPU, where prompts run unpadded and only decoding
    is batched (``prefilled_cache``), little elsewhere."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return 0.5 if on_cpu and can_assemble_cache(model) else 0.15


_pads_alike: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()


def pads_like_alone(model: Any, pad_id: int) -> bool:
    """Whether a left-padded batch of this model gives every prompt its own greedy answer.

    Most families take left padding as they are, but not all: RWKV has no attention mask, and some families place
    positions by index. A probe of two prompts, one of them padded, against that one alone finds out once per model;
    where padding changes the answer, each prompt runs by itself.
    """
    if model not in _pads_alike:
        _pads_alike[model] = _padded_probe_matches(model, pad_id)
        if not _pads_alike[model]:
            log.warning(
                "%s answers differently when left-padded in a batch: generating one prompt at a time",
                type(model).__name__,
            )
    return _pads_alike[model]


def _padded_probe_matches(model: Any, pad_id: int) -> bool:
    import torch

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    vocabulary = model.get_input_embeddings().num_embeddings
    short, long = (torch.randint(3, vocabulary, (length,), generator=generator) for length in (5, 9))
    probe = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False, "pad_token_id": pad_id}
    probe |= {"output_logits": True, "return_dict_in_generate": True}
    input_ids, attention = left_padded([short.tolist(), long.tolist()], pad_id)
    with torch.inference_mode():
        alone = model.generate(input_ids=short[None].to(device), **probe).logits
        padded = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **probe).logits
    scale = max(float(step.abs().max()) for step in alone)
    steps = zip(alone, padded, strict=True)
    return all(float((one[0] - batched[0]).abs().max()) <= 0.05 * scale for one, batched in steps)


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """Input ids and attention mask with every prompt ending where generation starts."""
    import torch

    longest = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, longest - len(ids) :] = torch.tensor(ids)
        attention[row, longest - len(ids) :] = 1
    return input_ids, attention


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    end_of_turn: str,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    progress: Callable[[int], Any] | None = None,
    batches: Sequence[Sequence[int]] | None = None,
    synced: bool = False,
    stop: StopFlag | None = None,
    cancelled: Callable[[int], bool] | None = None,
    on_tokens: Callable[[int, list[int]], None] | None = None,
    prompt_lookup: int = PROMPT_LOOKUP_TOKENS,
) -> tuple[list[str], list[float]]:
    """Batched greedy generation over token-id prompts, longest first; answers in input order.

    ``batches`` (indices into ``prompts``: one rank's ``lockstep_batches``) replace the batching by length, and a
    prompt that no batch holds gets an empty answer; ``synced``: every process runs this call in lockstep.
    ``stop``: raise ``StopRequested``, keeping no answer, once a stop is asked for (on any rank, when synced).
    ``cancelled(index)``: whether a prompt's answer is no longer wanted (a server's client went away): it is left
    out of the batches not yet started, leaves a running one at its next decode segment, and gets an empty answer.
    ``on_tokens(index, new_ids)``: a prompt's new token ids so far, after every decoding step. Single-process only.
    ``prompt_lookup``: a batch of one prompt (``rqa ask``, a lone request, the last short batch) drafts that many
    tokens from its own text (``decode_alone_with_lookup``) where the model's cache holds plain keys and values
    (``can_assemble_cache``); 0 turns it off. Single-process only.
    """
    import torch
    from transformers import StoppingCriteriaList

    settings = greedy_settings(tokenizer, end_of_turn, max_new_tokens)
    feed = TokenFeed(on_tokens) if on_tokens is not None else None
    criteria = [*([stop_criterion(stop)] if stop is not None else []), *([feed.criterion()] if feed else [])]
    if criteria:
        settings["stopping_criteria"] = StoppingCriteriaList(criteria)
    answers: list[str] = [""] * len(prompts)
    seconds: list[float] = [0.0] * len(prompts)
    device = next(model.parameters()).device
    on_cpu = device.type == "cpu"
    assemble = on_cpu and can_assemble_cache(model)
    if batches is None:
        # assembled from unpadded prompts, padding costs only the decode steps' reads of the cache
        batches = length_batches([len(p) for p in prompts], batch_size, padding_allowed(model))
    # a batch of one drafts from its own prompt (prompt lookup), where the cache holds plain keys and values to cut
    drafting = bool(prompt_lookup) and not synced and can_assemble_cache(model)
    # prompts beginning alike compute the common part once (not under lockstep: every rank makes a forward per row)
    prefixes = (
        SharedPrefixes([prompts[i] for batch in batches if len(batch) > 1 or not drafting for i in batch])
        if assemble and not synced
        else None
    )

    def checkpoint() -> None:
        if stop is not None:
            stop.check(synced, device)

    was_training = model.training
    model.eval()
    try:
        if not assemble and not pads_like_alone(model, settings["pad_token_id"]):
            batches = [[index] for batch in batches for index in batch]  # padding would change the answers
        # sharded weights (synced) are gathered by their own forward: only a lone CPU process swaps kernels
        kernels = onednn_linears(model) if on_cpu and not synced else nullcontext()
        # decoding from an assembled cache: each row's attention reads its own prompt and answer, not the padding
        spans = own_span_attention(model) if assemble else nullcontext()
        with torch.inference_mode(), kernels, spans:
            for batch in batches:
                checkpoint()
                if cancelled is not None:
                    batch = [index for index in batch if not cancelled(index)]
                    if not batch:
                        continue
                rows = [prompts[i] for i in batch]
                input_ids, attention = left_padded(rows, settings["pad_token_id"])
                began = time.perf_counter()
                if feed is not None:
                    feed.batch = batch
                if drafting and len(batch) == 1:
                    new_ids = [
                        decode_alone_with_lookup(
                            model,
                            input_ids.to(device),
                            settings,
                            prompt_lookup,
                            dropped=None if cancelled is None else (lambda index=batch[0]: cancelled(index)),
                            feed=feed,
                        )
                    ]
                elif assemble:
                    cache = prefilled_cache(model, rows, max_new_tokens, checkpoint, synced, prefixes)
                    new_ids = decode_dropping_finished_rows(
                        model,
                        input_ids,
                        attention,
                        cache,
                        settings,
                        tokenizer,
                        checkpoint,
                        synced,
                        dropped=None if cancelled is None else (lambda row, rows_of=batch: cancelled(rows_of[row])),
                        feed=feed,
                    )
                else:
                    if feed is not None:  # one generate call: its rows are the batch's, new tokens after the prompt
                        feed.begin(range(len(batch)), input_ids.shape[1])
                    output = model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attention.to(device),
                        use_cache=True,
                        **settings,
                        **({"synced_gpus": True} if synced else {}),
                    )
                    new_ids = [row[input_ids.shape[1] :].tolist() for row in output]
                elapsed = (time.perf_counter() - began) / len(batch)
                for row, index in enumerate(batch):
                    answers[index], seconds[index] = answer_text(tokenizer, new_ids[row], end_of_turn), elapsed
                if progress is not None:
                    progress(len(batch))
            checkpoint()  # a stop during the last batch cut its answers short: none is returned
    finally:
        model.train(was_training)
    return answers, seconds
