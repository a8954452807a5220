"""Prompts: the chat template around a content slot, with the instruction in the target language.

The user turn is `<speech>{content}</speech>` then the instruction. The content slot holds
the projected speech embeddings, or, for text-only examples, the source text's token
embeddings: the same frame, so LoRA trained on text carries over to speech.
"""

from __future__ import annotations

from dataclasses import dataclass

from tympan.tasks import PromptError, format_instruction, merged_templates
from tympan.training.recipe import PromptConfig

__all__ = ["CLOSE", "OPEN", "SLOT", "PromptBuilder", "PromptError", "PromptIds"]

SLOT = "\u0000SLOT\u0000"
OPEN, CLOSE = "<speech>", "</speech>"


@dataclass(frozen=True)
class PromptIds:
    prefix: list[int]  # tokens before the content slot
    suffix: list[int]  # tokens after it, ending with the assistant's turn header


class PromptBuilder:
    def __init__(self, tokenizer, cfg: PromptConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.templates = merged_templates(cfg.instructions)
        self.end_ids = self._end_of_turn_ids()
        self._cache: dict[str, PromptIds] = {}

    def languages(self, task: str) -> list[str]:
        return sorted(self.templates.get(task, {}))

    def instruction(self, task: str, tgt_lang: str, question: str | None = None) -> str:
        return format_instruction(self.templates, task, tgt_lang, question)

    def _system(self) -> list[dict[str, str]]:
        if self.cfg.system or self.cfg.empty_system_turn:
            return [{"role": "system", "content": self.cfg.system}]
        return []

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, instruction: str) -> PromptIds:
        """Token ids around the content slot for this instruction (memoised)."""
        cached = self._cache.get(instruction)
        if cached is not None:
            return cached
        messages = [*self._system(), {"role": "user", "content": f"{OPEN}{SLOT}{CLOSE}\n{instruction}"}]
        before, after = self._render(messages, generation_prompt=True).split(SLOT)
        ids = PromptIds(self._encode(before), self._encode(after))
        if len(self._cache) < 4096:
            self._cache[instruction] = ids
        return ids

    def frame(self) -> dict[str, str]:
        """The rendered chat template as text around the content slot and the instruction.

        prompt text = before_content + CONTENT + between + INSTRUCTION + after_instruction;
        a serving host rebuilds `prompt()` from these strings with the tokenizer alone.
        """
        marker = "\u0002INSTRUCTION\u0002"
        messages = [*self._system(), {"role": "user", "content": f"{OPEN}{SLOT}{CLOSE}\n{marker}"}]
        before, after = self._render(messages, generation_prompt=True).split(SLOT)
        between, after_instruction = after.split(marker)
        return {"before_content": before, "between": between, "after_instruction": after_instruction}

    def content_ids(self, text: str) -> list[int]:
        return self._encode(text)

    def target_ids(self, target: str) -> list[int]:
        """The answer's tokens followed by the template's end-of-turn token."""
        return self._encode(target) + self.end_ids

    def _end_of_turn_ids(self) -> list[int]:
        # What the template writes right after an assistant message: its first token ends the turn.
        marker = "\u0001END\u0001"
        rendered = self._render(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], generation_prompt=False
        )
        tail = rendered.split(marker, 1)[1]
        ids = self._encode(tail)
        if ids and ids[0] in self.tokenizer.all_special_ids:
            return ids[:1]
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise PromptError("the tokenizer has no end-of-turn or eos token")
        return [eos]

    @property
    def stop_ids(self) -> list[int]:
        ids = list(self.end_ids)
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos not in ids:
            ids.append(eos)
        return ids
