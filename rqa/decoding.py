"""The CPU decoding path of batched generation: prompts prefilled alone, a shared static cache, rows that leave.

On a CPU two costs dominate:

* Prompt processing. A padded batch needs an explicit attention mask, which takes SDPA off its fused causal
  kernel, and computes every prompt at the longest one's length (measured on 2 cores: about 2 ms per real token,
  against 1.1 ms for one unpadded prompt at a time). So each prompt but its last token is run alone, unpadded,
  and the batch's cache is assembled from the results (``prefilled_cache``).
* Decoding, bound by memory reads. A batched step reads every weight once for all its rows (each row still
  reads its own cache, and only its own span of it: ``rqa.span_attention``), and a preallocated (static) cache
  spares the copy of every layer's keys and values that the dynamic cache makes at every step.

``generate`` then starts from the assembled cache: its first step feeds each row's last prompt token, with
positions taken from the attention mask as usual. Decoding runs in segments of ``DECODE_SEGMENT`` tokens; after
each, rows whose answer has ended leave the batch (their cache rows are dropped), since every row of a batch
reads its own cache at every step until the longest answer ends. Under several processes a rank whose rows have
all ended keeps decoding a one-token filler while the others decode, and ``generate`` runs with ``synced_gpus``.

Stopping criteria are the one hook ``generate`` calls at every step for the whole batch: ``stop_criterion`` ends
a call when a stop is asked for, and ``TokenFeed`` hands every row's new tokens to a listener without stopping.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from rqa.shared_prefixes import SharedPrefixes
    from rqa.signals import StopFlag

DECODE_SEGMENT = 32  # new tokens per ``generate`` call before finished rows leave the batch (CPU path)


def any_rank(flag: bool, device: Any) -> bool:
    """Whether ``flag`` is set on any process (a collective call: every rank makes it at the same point)."""
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def stop_when(requested: Callable[[], bool]) -> Any:
    """A stopping criterion that ends a ``generate`` call at its next step once ``requested()`` is true."""
    import torch
    from transformers import StoppingCriteria

    class StopWhenRequested(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), requested(), dtype=torch.bool, device=input_ids.device)

    return StopWhenRequested()


def stop_criterion(stop: StopFlag) -> Any:
    """A stopping criterion that ends a ``generate`` call at its next step once this process is asked to stop."""
    return stop_when(stop.requested)


class TokenFeed:
    """Tells ``on_tokens(index, new_ids)`` each prompt's new tokens so far after every decoding step.

    ``batch`` holds the prompt indices of the batch being generated; ``generate`` sees only the rows of its current
    call, and ``begin`` says which rows of the batch they are, where their new tokens start and what earlier
    segments already gave them. Tokens after a row's end (padding) are included: the listener cuts at the end of
    turn, as ``answer_text`` does.
    """

    def __init__(self, on_tokens: Callable[[int, list[int]], None]) -> None:
        self.on_tokens = on_tokens
        self.batch: Sequence[int] = ()
        self.indices: Sequence[int] = ()
        self.start = 0
        self.earlier: Sequence[list[int]] = ()

    def begin(self, indices: Sequence[int], start: int, earlier: Sequence[list[int]] | None = None) -> None:
        self.indices, self.start = indices, start
        self.earlier = earlier if earlier is not None else [[] for _ in indices]

    def criterion(self) -> Any:
        import torch
        from transformers import StoppingCriteria

        feed = self

        class HandOver(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                for row, tokens in enumerate(input_ids[:, feed.start :].tolist()):
                    feed.on_tokens(feed.batch[feed.indices[row]], feed.earlier[row] + tokens)
                return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)

        return HandOver()


def cache_keyword() -> str:
    """The KV cache's name in model outputs and ``generate``: ``cache`` in recent transformers, else the older one."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


_assembles: WeakKeyDictionary[Any, bool] = WeakKeyDictionary()


def can_assemble_cache(model: Any) -> bool:
    """Whether this model's prompts can be prefilled alone and decoded from one assembled static cache.

    That needs every layer to cache plain keys and values over the whole sequence: no sliding window, no
    linear-attention or recurrent state, no indexer keys (DeepSeek-V3.2-style sparse attention), which assembling
    would drop. The static cache's layout and the cache the model's own forward returns both have to say so.
    """
    if model not in _assembles:
        _assembles[model] = _caches_plain_keys_and_values(model)
    return _assembles[model]


def _caches_plain_keys_and_values(model: Any) -> bool:
    import torch
    from transformers import DynamicCache, StaticCache
    from transformers.cache_utils import DynamicLayer, StaticLayer

    try:
        layers = StaticCache(config=model.config, max_cache_len=1).layers
    except Exception:  # a layout the static cache does not know (older transformers, new attention kinds)
        return False
    if not layers or any(type(layer) is not StaticLayer for layer in layers):
        return False
    if cache_keyword() not in inspect.signature(model.forward).parameters:
        return False  # the family keeps no cache, or a state of its own (RWKV)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the probe leaves the random state alone
    try:
        with torch.inference_mode():
            output = model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device), use_cache=True)
    finally:
        model.train(was_training)
    cache = getattr(output, cache_keyword(), None)
    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def prefilled_cache(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    checkpoint: Callable[[], None] | None = None,
    synced: bool = False,
    prefixes: SharedPrefixes | None = None,
) -> Any:
    """A static cache holding every prompt but its last token, left-padded to the longest, room for the answer.

    Each prompt runs alone and unpadded, so SDPA keeps its causal kernel; rotary positions are already applied to
    the cached keys, so a row's padding only needs masking. Rows of a single token have nothing to cache (when
    ``synced``, they still run a forward: every rank makes one per row). ``checkpoint`` runs before each prompt.
    ``prefixes``: beginnings computed by earlier prompts of the generation; a prompt computes only what follows its
    longest one, and leaves its own for the prompts to come.
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
        reused, layers = prefixes.start(ids) if prefixes is not None else (0, None)
        past = cache_holding(model, layers) if layers is not None else None
        if past is None or reused < len(ids) - 1:
            rest = torch.tensor([ids[reused:-1]], device=device)
            output = model(input_ids=rest, use_cache=True, logits_to_keep=1, **{cache_keyword(): past})
            past = getattr(output, cache_keyword())
        if prefixes is not None:
            prefixes.computed(ids, [(layer.keys, layer.values) for layer in past.layers])
        row_caches.append(past)
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


def cache_holding(model: Any, layers: Sequence[tuple[Any, Any]]) -> Any:
    """A dynamic cache that starts with these keys and values (one pair per layer)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer, (keys, values) in enumerate(layers):
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
    feed: TokenFeed | None = None,
) -> list[list[int]]:
    """Greedy new tokens for each row, generated ``DECODE_SEGMENT`` at a time from a prefilled static cache.

    Between segments the rows whose answer has ended (an end-of-turn id or stop string) leave the batch, and the
    others continue from their own cache rows: every row gets the tokens a single ``generate`` call would give it.
    ``checkpoint`` runs before each segment. ``synced``: every rank runs segments until the rows of every rank
    have ended; a rank whose own rows have ended decodes a one-token filler meanwhile, and discards it.
    ``dropped(row)``: whether a row is no longer wanted (a client that went away); it leaves at the next segment.
    ``feed`` hears each row's new tokens after every step.
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
        if feed is not None:
            feed.begin(rows, input_ids.shape[1], [new_tokens[row] for row in rows])
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


def decode_alone_with_lookup(
    model: Any,
    input_ids: Any,
    settings: dict[str, Any],
    drafted: int,
    dropped: Callable[[], bool] | None = None,
    feed: TokenFeed | None = None,
) -> list[int]:
    """Greedy new tokens for one prompt with prompt-lookup decoding: ``drafted`` tokens copied from where the text so
    far last continued the same n-gram, all checked in one forward pass, so the greedy answer comes in fewer passes.

    A RAG answer copies spans of its passages, which is what the drafts hit. transformers' assisted generation does
    this for a batch of one on its own dynamic cache, so a row that is alone runs it from its prompt.
    ``dropped()``: the answer is no longer wanted (ends the call at the next step).
    """
    import torch
    from transformers import StoppingCriteriaList

    criteria = [*(settings.get("stopping_criteria") or []), *([stop_when(dropped)] if dropped is not None else [])]
    if feed is not None:
        feed.begin([0], input_ids.shape[1])
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        use_cache=True,
        prompt_lookup_num_tokens=drafted,
        **{**settings, "stopping_criteria": StoppingCriteriaList(criteria)},
    )
    return output[0, input_ids.shape[1] :].tolist()
