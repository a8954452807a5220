"""Prompts on the serving side: the bundle's chat frame and instructions, tokenized with `tokenizers`."""

from __future__ import annotations

from tympan.runtime.bundle import Bundle
from tympan.tasks import format_instruction


class Prompts:
    def __init__(self, bundle: Bundle) -> None:
        from tokenizers import Tokenizer

        meta = bundle.manifest.prompt
        self.tokenizer = Tokenizer.from_file(str(bundle.file(meta.tokenizer)))
        self.templates = meta.instructions
        self.frame = meta.frame
        self.stop_ids = meta.stop_ids
        self.max_new_tokens = meta.max_new_tokens
        self._before = self._encode(self.frame.before_content)
        self._cache: dict[str, list[int]] = {}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def instruction(self, task: str, tgt_lang: str, question: str | None = None) -> str:
        return format_instruction(self.templates, task, tgt_lang, question)

    def ids(self, instruction: str) -> tuple[list[int], list[int]]:
        """(tokens before the speech, tokens after it) for this instruction."""
        suffix = self._cache.get(instruction)
        if suffix is None:
            suffix = self._encode(self.frame.between + instruction + self.frame.after_instruction)
            if len(self._cache) < 4096:
                self._cache[instruction] = suffix
        return self._before, suffix

    def decode(self, ids: list[int]) -> str:
        """Text of generated tokens. Bytes that do not form a character yet (a multi-byte
        character cut mid-way, or stray bytes) are left out rather than shown as U+FFFD."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).replace("\ufffd", "").strip()
