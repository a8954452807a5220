"""Tasks, languages and their instructions: the one home of these names, shared by training and serving.

The instructions are written in the target language.
"""

from __future__ import annotations

from collections.abc import Mapping

from tympan.errors import TympanError

TASKS = ("asr", "st", "sqa")  # transcription, speech translation, spoken question answering
SOURCE_LANG = "en"  # the language of the speech
LANGS = ("en", "de", "it", "zh")  # every language an answer can be in
ST_LANGS = ("de", "it", "zh")  # translation targets
# The target language a task answers in when a request names none (st has no default: it must be chosen).
DEFAULT_TARGET = {"asr": "en", "sqa": "en"}

INSTRUCTIONS: dict[str, dict[str, str]] = {
    "asr": {"en": "Transcribe what is said."},
    "st": {
        "de": "Übersetze das Gesagte ins Deutsche.",
        "it": "Traduci in italiano ciò che viene detto.",
        "zh": "将所说的内容翻译成中文。",
    },
    "sqa": {
        "en": "Answer the question: {question}",
        "de": "Beantworte die Frage auf Deutsch: {question}",
        "it": "Rispondi alla domanda in italiano: {question}",
        "zh": "用中文回答问题：{question}",
    },
}


# What an instruction-tuned LLM is told when it reads the heard text as text (a bundle's `text_llm`): in English,
# the language these models follow instructions in best, naming the language to answer in. The heard text follows
# the instruction after a blank line. SQA answers are short spans of the passage (a number, a time, a name), so the
# instruction asks for the span alone: a sentence around it would never match the reference.
TEXT_INSTRUCTIONS: dict[str, dict[str, str]] = {
    "asr": {"en": "Repeat the following English text exactly."},
    "st": {
        "de": "Translate the following English text into German. Reply with the German translation only.",
        "it": "Translate the following English text into Italian. Reply with the Italian translation only.",
        "zh": "Translate the following English text into Simplified Chinese. Reply with the Chinese translation only.",
    },
    "sqa": {
        lang: f"Answer the question about the English text below in {name}. Reply with the answer alone, as short "
        "as possible: a number or time as digits, or a few words.\nQuestion: {question}"
        for lang, name in (("en", "English"), ("de", "German"), ("it", "Italian"), ("zh", "Chinese"))
    },
}


class PromptError(TympanError, ValueError):
    """No instruction exists for a task and language, or a question is missing."""


def merged_templates(overrides: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    templates = {task: dict(langs) for task, langs in INSTRUCTIONS.items()}
    for task, langs in overrides.items():
        templates.setdefault(task, {}).update(langs)
    return templates


def format_instruction(
    templates: Mapping[str, Mapping[str, str]], task: str, tgt_lang: str, question: str | None = None
) -> str:
    template = templates.get(task, {}).get(tgt_lang)
    if template is None:
        known = ", ".join(sorted(templates.get(task, {}))) or "none"
        raise PromptError(f"no instruction for task {task!r} into {tgt_lang!r} (known: {known})")
    if task == "sqa":
        if not question:
            raise PromptError("task 'sqa' needs a question")
        return template.replace("{question}", question)
    return template
