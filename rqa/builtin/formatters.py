"""Built-in chat formatters: model-family presets, the tokenizer's template, and LocalRQA's prefixes."""

from __future__ import annotations

from typing import Any

from rqa.formatting import (
    ASSISTANT_PREFIX,
    LAYOUTS,
    SEP_SYS,
    SEP_USER,
    USER_PREFIX,
    ChatTemplateFormatter,
    Formatter,
    LayoutFormatter,
    PrefixFormatter,
)
from rqa.hookspecs import hookimpl

_DESCRIPTIONS = {
    "mistral": "Mistral-Instruct: <s>[INST] ... [/INST] answer</s>",
    "vicuna": "Vicuna v1.1: USER: ... ASSISTANT: answer</s>",
    "chatml": "ChatML (SmolLM2, Qwen): <|im_start|>role ... <|im_end|>",
    "llama3": "Llama 3 Instruct: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
    "zephyr": "Zephyr: <|user|> ... </s> <|assistant|> ... </s>",
    "openchat": "OpenChat 3.5: GPT4 Correct User/Assistant with <|end_of_turn|>",
}


def _preset(name: str):
    def factory() -> Formatter:
        return LayoutFormatter(name, LAYOUTS[name])

    factory.__doc__ = _DESCRIPTIONS[name]
    return factory


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    if tokenizer is None or tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def prefixes(
    tokenizer: Any = None,
    user_prefix: str = USER_PREFIX,
    assistant_prefix: str = ASSISTANT_PREFIX,
    sep_user: str = SEP_USER,
    sep_sys: str = SEP_SYS,
) -> Formatter:
    """LocalRQA's --user_prefix/--assistant_prefix/--sep_user/--sep_sys format, string for string."""
    bos = tokenizer.bos_token if _tokenizer_adds_bos(tokenizer) else ""
    return PrefixFormatter(user_prefix, assistant_prefix, sep_user, sep_sys, bos=bos)


def chat_template(tokenizer: Any) -> Formatter:
    """The tokenizer's own chat template (apply_chat_template)."""
    return ChatTemplateFormatter(tokenizer)


def auto(
    tokenizer: Any,
    user_prefix: str = USER_PREFIX,
    assistant_prefix: str = ASSISTANT_PREFIX,
    sep_user: str = SEP_USER,
    sep_sys: str = SEP_SYS,
) -> Formatter:
    """The tokenizer's chat template when it has one, else LocalRQA's prefixes."""
    if getattr(tokenizer, "chat_template", None):
        return ChatTemplateFormatter(tokenizer)
    return prefixes(tokenizer, user_prefix, assistant_prefix, sep_user, sep_sys)


@hookimpl
def register_formatters(register) -> None:
    for name in LAYOUTS:
        register(name, _preset(name))
    register("chat-template", chat_template)
    register("prefixes", prefixes)
    register("auto", auto)
