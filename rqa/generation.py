"""Batched greedy generation for evaluation and the assistant: the same answers as one prompt at a time, faster.

On a GPU, a left-padded batch goes through ``generate`` as it is. On a CPU two costs dominate:

* Prompt processing. A padded batch needs an explicit attention mask, which takes SDPA off its fused causal
  kernel, and computes every prompt at the longest one's length (measured on 2 cores: about 2 ms per real token,
  against 1.1 ms for one unpadded prompt at a time). So each prompt but its last token is run alone, unpadded,
  and the batch's cache is assembled from the results (``prefilled_cache``).
* Decoding, bound by memory reads. A batched step reads every weight once for all its rows (each row still
  reads its own cache), and a preallocated (static) cache spares the copy of every layer's keys and values that
  the dynamic cache makes at every step.

``generate`` then starts from the assembled cache: its first step feeds each row's last prompt token, with
positions taken from the attention mask as usual. Decoding runs in segments of ``DECODE_SEGMENT`` tokens; after
each, rows whose answer has ended leave the batch (their cache rows are dropped), since every row of a batch
reads its own cache at every step until the longest answer ends.

Under several processes (``synced``) every rank makes the same forward and ``generate`` calls in the same order,
which sharded weights (FSDP, DeepSpeed ZeRO-3) need: each forward gathers the weights from every rank.
``lockstep_batches`` gives every rank as many batches of as many rows, a rank whose rows have all ended keeps
decoding a one-token filler while the others decode, and ``generate`` runs with ``synced_gpus``.

A ``StopFlag`` abandons the work (``StopRequested``) before every batch, prompt and decode segment, and a
stopping criterion ends the current ``generate`` call at the next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rqa.signals import StopFlag

DECODE_SEGMENT = 32  # new tokens per ``generate`` call before finished rows leave the batch (CPU path)


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


def any_rank(flag: bool, device: Any) -> bool:
    """Whether ``flag`` is set on any process (a collective call: every rank makes it at the same point)."""
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def stop_criteria(stop: StopFlag) -> Any:
    """A stopping criterion that ends a ``generate`` call at its next step once this process is asked to stop."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenRequested(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.requested(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenRequested()])


def cache_keyword() -> str:
    """The KV cache's name in model outputs and ``generate``: ``cache`` in recent transformers, else the older one."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def can_assemble_cache(model: Any) -> bool:
    """Whether a static cache of full-length layers can be built for this model (not sliding-window layers)."""
    from transformers import StaticCache

    try:
        layers = StaticCache(config=model.config, max_cache_len=1).layers
    except (TypeError, AttributeError):  # transformers before the per-layer cache API
        return False
    return not any(layer.is_sliding for layer in layers)


def prefilled_cache(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    checkpoint: Callable[[], None] | None = None,
    synced: bool = False,
) -> Any:
    """A static cache holding every prompt but its last token, left-padded to the longest, room for the answer.

    Each prompt runs alone and unpadded, so SDPA keeps its causal kernel; rotary positions are already applied to
    the cached keys, so a row's padding only needs masking. Rows of a single token have nothing to cache (when
    ``synced``, they still run a forward: every rank makes one per row). ``checkpoint`` runs before each prompt.
    """
    import torch
    from transformers import StaticCache

    device = next(model.parameters()).device
    cached = max(len(ids) for ids in prompts) - 1
    row_caches = []
    for ids in prompts:
        if checkpoint is not None:
            checkpoint()
        if len(ids) < 2:
            if synced:
                model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False, logits_to_keep=1)
            row_caches.append(None)
            continue
        output = model(input_ids=torch.tensor([ids[:-1]], device=device), use_cache=True, logits_to_keep=1)
        row_caches.append(getattr(output, cache_keyword()))
    cache = StaticCache(config=model.config, max_cache_len=cached + max_new_tokens)
    if cached == 0:
        return cache
    template = next(row for row in row_caches if row is not None)
    shapes = [(layer.keys.shape, layer.values.shape) for layer in template.layers]
    for layer, (key_shape, value_shape) in enumerate(shapes):
        keys = template.layers[layer].keys.new_zeros((len(prompts), key_shape[1], cached, key_shape[-1]))
        values = template.layers[layer].values.new_zeros((len(prompts), value_shape[1], cached, value_shape[-1]))
        for row, row_cache in enumerate(row_caches):
            if row_cache is not None:
                length = row_cache.layers[layer].keys.shape[2]
                keys[row, :, cached - length :] = row_cache.layers[layer].keys[0]
                values[row, :, cached - length :] = row_cache.layers[layer].values[0]
                row_cache.layers[layer] = None  # released as the batch's cache fills: memory stays near one cache
        cache.update(keys, values, layer)
    return cache


def kept_rows(cache: Any, model: Any, rows: Sequence[int], filled: int) -> Any:
    """A static cache of the same length holding only ``rows`` of ``cache``'s first ``filled`` positions."""
    import torch
    from transformers import StaticCache

    kept = StaticCache(config=model.config, max_cache_len=cache.layers[0].max_cache_len)
    index = torch.tensor(list(rows), device=cache.layers[0].keys.device)
    for layer, old in enumerate(cache.layers):
        kept.update(old.keys[index, :, :filled], old.values[index, :, :filled], layer)
        cache.layers[layer] = None  # released as the new cache fills
    return kept


def decode_dropping_finished_rows(
    model: Any,
    input_ids: Any,
    attention: Any,
    cache: Any,
    settings: dict[str, Any],
    tokenizer: Any,
    checkpoint: Callable[[], None] | None = None,
    synced: bool = False,
    dropped: Callable[[int], bool] | None = None,
) -> list[list[int]]:
    """Greedy new tokens for each row, generated ``DECODE_SEGMENT`` at a time from a prefilled static cache.

    Between segments the rows whose answer has ended (an end-of-turn id or stop string) leave the batch, and the
    others continue from their own cache rows: every row gets the tokens a single ``generate`` call would give it.
    ``checkpoint`` runs before each segment. ``synced``: every rank runs segments until the rows of every rank
    have ended; a rank whose own rows have ended decodes a one-token filler meanwhile, and discards it.
    ``dropped(row)``: whether a row is no longer wanted (a client that went away); it leaves at the next segment.
    """
    import torch

    eos_ids = set(settings["eos_token_id"])
    stop_strings = settings["stop_strings"] or []
    rows = list(range(input_ids.shape[0]))
    new_tokens: list[list[int]] = [[] for _ in rows]
    remaining = settings["max_new_tokens"]
    lockstep = {"synced_gpus": True} if synced else {}
    while remaining > 0:
        steps = min(DECODE_SEGMENT, remaining)
        remaining -= steps
        if checkpoint is not None:
            checkpoint()
        if synced and not any_rank(bool(rows), input_ids.device):
            break
        if not rows:  # synced: the other ranks still decode, and sharded weights need this rank's forwards
            model.generate(
                input_ids=input_ids[:1, -1:],
                attention_mask=attention[:1, -1:],
                use_cache=True,
                **{**settings, "max_new_tokens": steps},
                **lockstep,
            )
            continue
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            use_cache=True,
            **{**settings, "max_new_tokens": steps},
            **{cache_keyword(): cache},
            **lockstep,
        )
        generated = output[:, input_ids.shape[1] :]
        keep = []
        for position, row in enumerate(rows):
            new_tokens[row] += generated[position].tolist()
            text = tokenizer.decode(new_tokens[row]) if stop_strings else ""
            ended = eos_ids & set(new_tokens[row]) or any(stop in text for stop in stop_strings)
            if not (ended or (dropped is not None and dropped(row))):
                keep.append(position)
        if not keep or generated.shape[1] < steps:  # every row has ended
            if not synced:
                break
            rows = []
            continue
        input_ids = output
        attention = torch.cat([attention, attention.new_ones(generated.shape)], dim=1)
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=input_ids.device)
            input_ids, attention = input_ids[index], attention[index]
            cache = kept_rows(cache, model, keep, input_ids.shape[1] - 1)
            rows = [rows[position] for position in keep]
    return new_tokens


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
) -> tuple[list[str], list[float]]:
    """Batched greedy generation over token-id prompts, longest first; answers in input order.

    ``batches`` (indices into ``prompts``: one rank's ``lockstep_batches``) replace the batching by length, and a
    prompt that no batch holds gets an empty answer; ``synced``: every process runs this call in lockstep.
    ``stop``: raise ``StopRequested``, keeping no answer, once a stop is asked for (on any rank, when synced).
    ``cancelled(index)``: whether a prompt's answer is no longer wanted (a server's client went away): it is left
    out of the batches not yet started, leaves a running one at its next decode segment, and gets an empty answer.
    Single-process only.
    """
    import torch

    settings = greedy_settings(tokenizer, end_of_turn, max_new_tokens)
    if stop is not None:
        settings["stopping_criteria"] = stop_criteria(stop)
    answers: list[str] = [""] * len(prompts)
    seconds: list[float] = [0.0] * len(prompts)
    device = next(model.parameters()).device
    on_cpu = device.type == "cpu"
    assemble = on_cpu and can_assemble_cache(model)
    if batches is None:
        # assembled from unpadded prompts, padding costs only the decode steps' reads of the cache
        batches = length_batches([len(p) for p in prompts], batch_size, padding_allowed(model))

    def checkpoint() -> None:
        if stop is not None:
            stop.check(synced, device)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                checkpoint()
                if cancelled is not None:
                    batch = [index for index in batch if not cancelled(index)]
                    if not batch:
                        continue
                rows = [prompts[i] for i in batch]
                input_ids, attention = left_padded(rows, settings["pad_token_id"])
                began = time.perf_counter()
                if assemble:
                    cache = prefilled_cache(model, rows, max_new_tokens, checkpoint, synced)
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
                    )
                else:
                    output = model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attention.to(device),
                        use_cache=True,
                        **settings,
                        **({"cache_implementation": "static"} if on_cpu else {}),
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
