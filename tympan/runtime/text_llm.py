"""An instruction-tuned LLM that reads what was heard as text: the bundle's `text_llm`.

With a second pass of hearing, a final's words are text. A multilingual LLM prompted with its own chat template and
the task's instruction translates and answers from that text without training on speech (docs/translation.md); the
speech LLM's adapter only ever saw one domain of parallel text. The LLM runs as one ONNX graph with a KV cache (int8
weights), driven by the runtime's decode loop, so its tokens stream like the speech LLM's.

numpy, tokenizers and onnxruntime only: no torch in the daemon."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tympan.runtime.bundle_manifest import BundleError, ChatTemplate, TextLlm
from tympan.runtime.decode import DEFAULT_SETTINGS, Decoded, DecodeSettings, Stop, greedy_decode
from tympan.runtime.onnx_llm import OnnxLLM
from tympan.tasks import format_instruction

# Qwen2.5's ChatML with its own default system turn (what its tokenizer's chat template writes when given none).
QWEN_CHAT = ChatTemplate(
    before="<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n",
    between="\n\n",
    after="<|im_end|>\n<|im_start|>assistant\n",
)
CHAT_FRAMES = {"qwen2": QWEN_CHAT}


def first_line(text: str) -> str:
    """An answer up to its first line break: a translation of one utterance is one line, and what an instruct
    model adds after it ("Note: ...", a second version) is not the answer."""
    return text.strip().split("\n", 1)[0].strip()


# Prompt prefixes (system turn, instruction) whose KV cache is kept: one per task and language of the bundle's own
# instructions; a Qwen2.5-1.5B prefix of 40 positions holds about 2 MB.
PREFIX_CACHE = 16


class _AfterPrefix:
    """The LLM as the decode loop sees it once a prompt's cached prefix is in: its prefill runs the rest alone."""

    def __init__(self, llm: OnnxLLM, state: Any) -> None:
        self.llm, self.state, self.hidden_size = llm, state, llm.hidden_size

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        return self.llm.embed(ids)

    def prefill(self, inputs_embeds: np.ndarray) -> tuple[np.ndarray, Any]:
        return self.llm.extend(inputs_embeds, self.state)

    def step(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        return self.llm.step(token, state)


class PrefixCache:
    """The KV cache of prompt prefixes (the chat frame's start and the instruction), run once each and kept, the
    last PREFIX_CACHE used: a prompt that begins with a kept prefix has only the rest to prefill (the heard text and
    the turn's end: about half of a translation's prompt)."""

    def __init__(self, llm: OnnxLLM) -> None:
        self.llm = llm
        self._kept: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def split(self, prefix: Sequence[int], ids: list[int]) -> tuple[OnnxLLM | _AfterPrefix, list[int]]:
        """What to prefill `ids` with: after `prefix`'s cache and the rest of `ids`, where `ids` begins with
        `prefix` (a merge across the boundary would not), else the whole prompt."""
        if not (0 < len(prefix) < len(ids) and ids[: len(prefix)] == list(prefix)):
            return self.llm, ids
        key = tuple(prefix)
        state = self._kept.get(key)
        if state is None:
            state = self.llm.prefill(self.llm.embed(prefix))[1]
            self._kept[key] = state
            if len(self._kept) > PREFIX_CACHE:
                self._kept.popitem(last=False)
        self._kept.move_to_end(key)
        return _AfterPrefix(self.llm, state), ids[len(prefix):]

    def __contains__(self, prefix: Sequence[int]) -> bool:
        return tuple(prefix) in self._kept


class TextLLM:
    """The bundle's text LLM: instruction + heard text in, answer tokens out (streamed through `on_token`)."""

    def __init__(self, directory: Path, entry: TextLlm, threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.entry = entry
        self.frame = entry.frame
        try:
            self.tokenizer = Tokenizer.from_file(str(directory / entry.tokenizer))
            self.llm = OnnxLLM(directory, entry.onnx, threads=threads)
        except Exception as e:  # tokenizers raises bare Exceptions, without the path
            raise BundleError(f"{directory}: the text LLM cannot be loaded ({entry.tokenizer}, "
                              f"{entry.onnx.graph.file}): {e}") from None
        self.stop_ids = frozenset(entry.stop_ids)
        self.prefixes = PrefixCache(self.llm)
        # Only the bundle's own instructions are kept in the cache: a question or a client's instruction is new on
        # every request (and up to 2000 characters: tens of MB of cache), so it is prefilled with the text.
        self.cached_instructions = frozenset(t for langs in entry.instructions.values() for t in langs.values()
                                             if "{question}" not in t)
        self.newline_ids = frozenset(i for i in range(self.tokenizer.get_vocab_size())
                                     if "\n" in (self.tokenizer.id_to_token(i) or "").replace("Ċ", "\n"))

    def instruction(self, task: str, tgt_lang: str, question: str | None = None) -> str:
        return format_instruction(self.entry.instructions, task, tgt_lang, question)

    def prompt_ids(self, instruction: str, text: str) -> list[int]:
        return self.tokenizer.encode(self.frame.render(instruction, text), add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """The answer's text so far: to its first line break, unfinished UTF-8 characters left out."""
        return first_line(self.tokenizer.decode(list(ids), skip_special_tokens=True).replace("\ufffd", ""))

    def answer(
        self,
        instruction: str,
        text: str,
        settings: DecodeSettings = DEFAULT_SETTINGS,
        *,
        cancelled: Callable[[], bool] | None = None,
        on_token: Callable[[Sequence[int]], None] | None = None,
    ) -> Decoded:
        """Greedy tokens answering `instruction` about `text`; no text, no answer. The decode ends at a line break
        that follows some words (see `first_line`)."""
        if not text.strip():
            return Decoded([], Stop.NOTHING_HEARD)
        ids = self.prompt_ids(instruction, text)
        llm, rest = (self.prefixes.split(self.prefix_ids(instruction), ids) if instruction in self.cached_instructions
                     else (self.llm, ids))
        return greedy_decode(llm, self.llm.embed(rest), self.stop_ids, settings.capped(self.entry.max_new_tokens),
                             cancelled=cancelled, on_token=on_token, ended=self.line_ended)

    def prefix_ids(self, instruction: str) -> list[int]:
        """The prompt's tokens before the heard text: the same for every utterance given this instruction."""
        return self.tokenizer.encode(self.frame.before + instruction + self.frame.between,
                                     add_special_tokens=False).ids

    def line_ended(self, tokens: Sequence[int]) -> bool:
        """The last token breaks the line after some words: the answer is complete (see `first_line`)."""
        return tokens[-1] in self.newline_ids and bool(self.decode(tokens[:-1]))
