"""Formatters: how an example becomes the text a model reads and the text it learns to write.

A formatter renders a conversation as a list of ``Piece``s. Pieces are tokenized one by one and their ids
concatenated, both for training and for generation, so the prompt ids a model is trained on are exactly the
ids it is given at inference. Prompts are tokenized without special tokens: a formatter writes BOS itself
where its model family expects one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rqa.schema import Document, Example, Turn

PieceKind = Literal["prompt", "reply", "answer"]

SYSTEM_INSTRUCTION = (
    "You are a support assistant. Answer the user's question using the passages below. "
    "If the passages do not contain the answer, say that you do not know."
)


@dataclass(frozen=True)
class Piece:
    """A span of rendered text: read by the model (``prompt``), or written by it (``reply``, ``answer``)."""

    text: str
    kind: PieceKind


@dataclass(frozen=True)
class Rendered:
    pieces: tuple[Piece, ...]

    @property
    def prompt_pieces(self) -> tuple[Piece, ...]:
        """Everything before the final answer: what generation starts from."""
        return tuple(p for p in self.pieces if p.kind != "answer")

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    @property
    def prompt(self) -> str:
        return "".join(p.text for p in self.prompt_pieces)

    @property
    def answer(self) -> str:
        return "".join(p.text for p in self.pieces if p.kind == "answer")


def passages_block(passages: Sequence[Document]) -> str:
    return "\n\n".join(p.text.strip() for p in passages)


class Formatter:
    """Base class: subclasses implement ``render``; ``end_of_turn`` is the text that closes a reply."""

    name = "base"
    end_of_turn = ""

    def render(self, example: Example, passages: Sequence[Document], with_answer: bool = True) -> Rendered:
        raise NotImplementedError

    def system_text(self, passages: Sequence[Document]) -> str:
        return f"{SYSTEM_INSTRUCTION}\n\nPassages:\n{passages_block(passages)}"


def _merge(pieces: list[Piece]) -> tuple[Piece, ...]:
    """Join neighbouring prompt pieces (fewer tokenizer boundaries); drop empty ones."""
    merged: list[Piece] = []
    for piece in pieces:
        if not piece.text:
            continue
        if merged and piece.kind == "prompt" and merged[-1].kind == "prompt":
            merged[-1] = Piece(merged[-1].text + piece.text, "prompt")
        else:
            merged.append(piece)
    return tuple(merged)


@dataclass(frozen=True)
class ChatLayout:
    """The strings of one chat format. ``{content}`` marks where a message goes."""

    bos: str
    system: str | None  # None: the system text is put in front of the first user message
    user: str
    assistant_open: str  # the prompt ends with this; the reply follows
    end_of_turn: str
    reply_prefix: str = ""  # text the model writes before its content (e.g. a space)
    after_reply: str = ""  # text after the end of turn, read (not written) by the model
    system_joiner: str = "\n\n"


class LayoutFormatter(Formatter):
    """A fixed chat layout with rqa's system instruction and the passages in the system turn."""

    def __init__(self, name: str, layout: ChatLayout) -> None:
        self.name, self.layout = name, layout
        self.end_of_turn = layout.end_of_turn

    def render(self, example: Example, passages: Sequence[Document], with_answer: bool = True) -> Rendered:
        layout = self.layout
        system = self.system_text(passages)
        pieces = [Piece(layout.bos, "prompt")]
        if layout.system is not None:
            pieces.append(Piece(layout.system.format(content=system), "prompt"))
        first_user = True

        def user_turn(content: str) -> Piece:
            nonlocal first_user
            if first_user and layout.system is None:
                content = f"{system}{layout.system_joiner}{content}"
            first_user = False
            return Piece(layout.user.format(content=content), "prompt")

        def assistant_turn(content: str, kind: PieceKind) -> list[Piece]:
            return [
                Piece(layout.assistant_open, "prompt"),
                Piece(f"{layout.reply_prefix}{content}{layout.end_of_turn}", kind),
                Piece(layout.after_reply, "prompt"),
            ]

        for turn in example.chat_history:
            if turn.role == "user":
                pieces.append(user_turn(turn.content))
            else:
                pieces += assistant_turn(turn.content, "reply")
        pieces.append(user_turn(example.question))
        if with_answer:
            pieces += assistant_turn(example.gold_answer, "answer")[:2]
        else:
            pieces.append(Piece(layout.assistant_open, "prompt"))
        return Rendered(_merge(pieces))


LAYOUTS: dict[str, ChatLayout] = {
    "chatml": ChatLayout(
        bos="",
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant_open="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        after_reply="\n",
    ),
    "llama3": ChatLayout(
        bos="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_open="<|start_header_id|>assistant<|end_header_id|>\n\n",
        end_of_turn="<|eot_id|>",
    ),
    "mistral": ChatLayout(
        bos="<s>",
        system=None,
        user="[INST] {content} [/INST]",
        assistant_open="",
        end_of_turn="</s>",
    ),
    "zephyr": ChatLayout(
        bos="",
        system="<|system|>\n{content}</s>\n",
        user="<|user|>\n{content}</s>\n",
        assistant_open="<|assistant|>\n",
        end_of_turn="</s>",
        after_reply="\n",
    ),
    "openchat": ChatLayout(
        bos="<s>",
        system="{content}<|end_of_turn|>",
        user="GPT4 Correct User: {content}<|end_of_turn|>",
        assistant_open="GPT4 Correct Assistant:",
        end_of_turn="<|end_of_turn|>",
        reply_prefix=" ",
    ),
    "vicuna": ChatLayout(
        bos="<s>",
        system="{content} ",
        user="USER: {content} ",
        assistant_open="ASSISTANT:",
        end_of_turn="</s>",
        reply_prefix=" ",
    ),
}


# LocalRQA's defaults for --user_prefix, --assistant_prefix, --sep_user and --sep_sys (Vicuna's format)
USER_PREFIX, ASSISTANT_PREFIX, SEP_USER, SEP_SYS = "USER", "ASSISTANT", " ", "</s>"

# LocalRQA's training prompt header, verbatim, so `prefixes` renders exactly the text LocalRQA trains on.
LOCALRQA_HEADER = (
    "This is a chat between a curious user and an artificial intelligence assistant.\n"
    "The assistant gives helpful, detailed, and polite answers using documents from the following context.\n"
    "Do not mention 'this context' in the assistant's response, since the following context is only visible "
    "to the assistant.\n"
    "----------------\n"
    "Context:\n"
    "{documents}\n"
    "----------------\n"
)


class PrefixFormatter(Formatter):
    """LocalRQA's ``--user_prefix/--assistant_prefix/--sep_user/--sep_sys`` format, string for string.

    Each turn is ``"{prefix}: {message}"`` followed by ``sep_user`` (user) or ``sep_sys`` (assistant), after
    LocalRQA's context header; LocalRQA's tokenizer call adds BOS, so BOS is written here when the
    tokenizer would add one.
    """

    name = "prefixes"

    def __init__(
        self,
        user_prefix: str = USER_PREFIX,
        assistant_prefix: str = ASSISTANT_PREFIX,
        sep_user: str = SEP_USER,
        sep_sys: str = SEP_SYS,
        bos: str = "",
    ) -> None:
        self.user_prefix, self.assistant_prefix = user_prefix, assistant_prefix
        self.sep_user, self.sep_sys, self.bos = sep_user, sep_sys, bos
        self.end_of_turn = sep_sys

    def render(self, example: Example, passages: Sequence[Document], with_answer: bool = True) -> Rendered:
        documents = "\n".join(p.text for p in passages)
        pieces = [Piece(self.bos + LOCALRQA_HEADER.format(documents=documents), "prompt")]
        for turn in example.chat_history:
            if turn.role == "user":
                pieces.append(Piece(f"{self.user_prefix}: {turn.content}{self.sep_user}", "prompt"))
            else:
                pieces.append(Piece(f"{self.assistant_prefix}:", "prompt"))
                pieces.append(Piece(f" {turn.content}{self.sep_sys}", "reply"))
        question = f"{self.user_prefix}: {example.question}{self.sep_user}{self.assistant_prefix}:"
        pieces.append(Piece(question, "prompt"))
        if with_answer:
            pieces.append(Piece(f" {example.gold_answer}{self.sep_sys}", "answer"))
        return Rendered(_merge(pieces))


class ChatTemplateFormatter(Formatter):
    """The tokenizer's own chat template (``tokenizer.apply_chat_template``)."""

    name = "chat-template"

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; choose a preset formatter instead")
        self.tokenizer = tokenizer
        self._system_role = self._template_accepts_system()
        self.end_of_turn = self._find_end_of_turn()

    def _apply(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _template_accepts_system(self) -> bool:
        try:
            self._apply([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], True)
            return True
        except Exception:  # templates such as Mistral's raise on a system role
            return False

    def _find_end_of_turn(self) -> str:
        messages = [{"role": "user", "content": "U"}]
        prompt = self._apply(messages, True)
        full = self._apply([*messages, {"role": "assistant", "content": "REPLY"}], False)
        tail = full[len(prompt) :].split("REPLY", 1)[-1].strip()
        return tail or (self.tokenizer.eos_token or "")

    def _messages(self, example: Example, passages: Sequence[Document]) -> list[dict[str, str]]:
        system = self.system_text(passages)
        turns: list[Turn] = [*example.chat_history, Turn("user", example.question)]
        messages = [{"role": t.role, "content": t.content} for t in turns]
        if self._system_role:
            return [{"role": "system", "content": system}, *messages]
        messages[0] = {"role": messages[0]["role"], "content": f"{system}\n\n{messages[0]['content']}"}
        return messages

    def render(self, example: Example, passages: Sequence[Document], with_answer: bool = True) -> Rendered:
        messages = self._messages(example, passages)
        if with_answer:
            messages.append({"role": "assistant", "content": example.gold_answer})
        pieces: list[Piece] = []
        consumed = ""
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._apply(messages[:index], True)
            through = self._apply(messages[: index + 1], False)
            if not before.startswith(consumed) or not through.startswith(before):
                raise ValueError("this chat template is not prefix-stable; choose a preset formatter")
            reply = through[len(before) :]
            end = reply.find(self.end_of_turn)
            cut = end + len(self.end_of_turn) if end >= 0 and self.end_of_turn else len(reply)
            kind: PieceKind = "answer" if index == len(messages) - 1 and with_answer else "reply"
            pieces += [Piece(before[len(consumed) :], "prompt"), Piece(reply[:cut], kind)]
            consumed = before + reply[:cut]
        if not with_answer:
            pieces.append(Piece(self._apply(messages, True)[len(consumed) :], "prompt"))
        return Rendered(_merge(pieces))
