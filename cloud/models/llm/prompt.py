"""History -> prompt token ids: the user's recent items, by title, as a list to continue.

The prompt shows the newest ``history_items`` titles, oldest first, one per
line as ``- Title\\n``, and ends with the answer's own ``-``, so the model's
next tokens are a title. The decoder then constrains those tokens to the
catalogue's titles (see :mod:`dcrec.cloud.models.llm.trie`); a title is finished by the
same newline that ends every line of the prompt, so the answer looks exactly
like the history above it.

Titles are tokenised once per catalogue (with a leading space, as they follow
``-``) and cut to ``title_tokens`` tokens; the prompt is built by
concatenating those pre-tokenised pieces, so building a prompt costs no
tokenizer call and the titles in the prompt and in the prefix tree are the
same token sequences.

Example::

    titles = tokenize_titles(tok, catalogue.titles, max_tokens=12)
    builder = PromptBuilder(tok, titles, PromptConfig(history_items=5))
    ids = builder.build(np.array([12, 7, 99]))   # list[int], ends with '-'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Where the history goes inside the rendered chat template: a string no title
# or template contains, so splitting on it is unambiguous.
_SLOT = "\x00HISTORY\x00"
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class PromptConfig:
    history_items: int = 5  # newest k titles shown; prefill cost grows linearly with k
    title_tokens: int = 12  # per-title token budget, in the prompt and in the prefix tree
    style: str = "chat"  # "chat": the tokenizer's chat template (instruct models); "plain": a bare list (base models)
    system: str = "You recommend products to shoppers."
    intro: str = "My purchases, oldest first:"
    question: str = "What will I buy next?"

    def validate(self) -> None:
        if self.history_items < 1:
            raise ValueError(f"history_items must be >= 1, got {self.history_items}")
        if self.title_tokens < 1:
            raise ValueError(f"title_tokens must be >= 1, got {self.title_tokens}")
        if self.style not in ("chat", "plain"):
            raise ValueError(f"style must be 'chat' or 'plain', got {self.style!r}")


def clean_title(title: str) -> str:
    """One line, single spaces: a newline inside a title would end it early."""
    return _SPACE.sub(" ", title).strip()


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token(tokenizer: Any, text: str) -> int:
    """The id of ``text`` when it is exactly one token; raises otherwise."""
    ids = _ids(tokenizer, text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} must be one token for this tokenizer, got {ids}")
    return ids[0]


def tokenize_titles(
    tokenizer: Any, titles: Sequence[str], max_tokens: int, batch: int = 2048
) -> list[list[int]]:
    """Token ids of each title as it follows ``-`` in a list, cut to ``max_tokens``.

    ``titles[i]`` is item ``i``'s title (index 0, the padding id, gives ``[]``).
    Newline tokens never occur inside a result: a newline ends a title.
    """
    newline = single_token(tokenizer, "\n")
    out: list[list[int]] = [[]]
    texts = [" " + clean_title(t) for t in titles[1:]]
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start : start + batch], add_special_tokens=False)["input_ids"]
        for ids in enc:
            out.append([t for t in ids if t != newline][:max_tokens])
    return out


class PromptBuilder:
    """Builds prompt token ids from histories of item ids.

    ``title_ids[i]``: item ``i``'s (already cut) title tokens, as from
    :func:`tokenize_titles`. Item ids outside ``1..len(title_ids)-1`` in a
    history are skipped, so a device with a newer catalogue cannot break it.
    """

    def __init__(self, tokenizer: Any, title_ids: Sequence[Sequence[int]], config: PromptConfig) -> None:
        config.validate()
        self.config = config
        self.title_ids = [list(t) for t in title_ids]
        self.end_token = single_token(tokenizer, "\n")
        self.dash = _ids(tokenizer, "-")
        head, tail = self._frame(tokenizer, config)
        self.head = _ids(tokenizer, head)
        self.tail = _ids(tokenizer, tail) + self.dash

    @staticmethod
    def _frame(tokenizer: Any, config: PromptConfig) -> tuple[str, str]:
        """Text before and after the history lines."""
        body = f"{config.intro}\n{_SLOT}{config.question}"
        if config.style == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError("style 'chat' needs a tokenizer with a chat template; use 'plain'")
            messages = [{"role": "system", "content": config.system}] if config.system else []
            messages.append({"role": "user", "content": body})
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = (config.system + "\n" if config.system else "") + body + "\n"
        head, sep, tail = text.partition(_SLOT)
        if not sep:
            raise ValueError("the chat template dropped the history slot")
        return head, tail

    def history_lines(self, history: np.ndarray) -> list[int]:
        """Token ids of the newest ``history_items`` valid items, oldest first."""
        n = len(self.title_ids)
        items = [int(i) for i in np.asarray(history).ravel() if 0 < int(i) < n]
        out: list[int] = []
        for i in items[-self.config.history_items :]:
            out += self.dash + self.title_ids[i] + [self.end_token]
        return out

    def build(self, history: np.ndarray) -> list[int]:
        """(L,) prompt token ids for one history (item ids, oldest first)."""
        return self.head + self.history_lines(history) + self.tail
