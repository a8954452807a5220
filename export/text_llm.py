"""The bundle's text LLM (`text_llm/`): an instruction-tuned LLM exported to one ONNX graph with its tokenizer and
chat template, checked against PyTorch before the bundle is published.

Checks: the chat frame the daemon renders (tympan/runtime/text_llm.py) gives the same text as the model's own chat
template, and the bundle's tokenizer the same tokens; the served graph (int8 by default) gives next-token logits
close to the fp32 model's in PyTorch for each verification prompt (`_verify`), and a non-empty answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tympan.errors import TympanError
from tympan.runtime.bundle_manifest import BundleError, TextLlm
from tympan.tasks import TEXT_INSTRUCTIONS
from tympan.training.recipe import TextLlmConfig

TEXT_LLM_DIR = "text_llm"
TOKENIZER_FILE = "tokenizer.json"
# What the verification translates: short, plain, one per target language.
CHECK_TEXT = "The meeting starts at ten tomorrow morning."
# The least correlation of the served graph's next-token logits with PyTorch fp32's, by quantization: a bound
# that catches a broken graph (unrelated logits correlate near 0), not a measure of quality, which is
# benchmarks/llm_choice.py's. Measured: int8 0.9997 (Qwen2.5-Coder-0.5B); int4 0.976-0.981 (1.5B, whose
# translations held: docs/translation.md) and 0.969 (0.5B, whose German fell from chrF 40 to 24.5).
MIN_CORRELATION = {"none": 0.999, "int8": 0.98, "int4": 0.95}


class TextLlmExportError(TympanError, RuntimeError):
    """The text LLM cannot be exported, or the exported graph does not answer as the model does."""


def write_text_llm(cfg: TextLlmConfig, resolve_path: Callable[[str], Path], tmp: Path,
                   say: Callable[[str], None] = print) -> TextLlm | None:
    """Export `cfg.checkpoint` into `tmp/text_llm` and verify it; None when the recipe names no text LLM."""
    if not cfg.checkpoint:
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tympan.export.llm_graph import export_llm_onnx
    from tympan.runtime.text_llm import CHAT_FRAMES
    from tympan.training.model.base_models import LLMS, PREFIX, gguf_file

    started = time.perf_counter()
    kwargs: dict[str, object] = {}
    name = cfg.checkpoint.removeprefix(PREFIX)
    if cfg.checkpoint.startswith(PREFIX):
        if name not in LLMS:
            raise TextLlmExportError(f"text_llm.checkpoint = {cfg.checkpoint!r}: unknown package LLM (known: "
                                     f"{', '.join(PREFIX + n for n in sorted(LLMS))})")
        # Read from the joined, checked GGUF each export: its fp32 conversion (6.7 GB for the 1.5B) is not kept,
        # the bundle is built once per version and the GGUF loads in about a minute.
        gguf = gguf_file(name)
        source, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    else:
        source = str(resolve_path(cfg.checkpoint))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs).eval()
    except (OSError, ValueError, ImportError) as e:
        raise TextLlmExportError(f"text_llm.checkpoint = {cfg.checkpoint!r}: cannot load {source}: {e}") from None
    model_type = str(model.config.model_type)
    if model_type not in CHAT_FRAMES:
        raise TextLlmExportError(f"text_llm.checkpoint = {cfg.checkpoint!r}: no chat frame for LLMs of type "
                                 f"{model_type!r} (known: {', '.join(CHAT_FRAMES)})")
    frame = CHAT_FRAMES[model_type]
    instruction = TEXT_INSTRUCTIONS["st"]["de"]
    ours = frame.render(instruction, CHECK_TEXT)
    theirs = tokenizer.apply_chat_template([{"role": "user", "content": f"{instruction}\n\n{CHECK_TEXT}"}],
                                           tokenize=False, add_generation_prompt=True)
    if ours != theirs:
        raise TextLlmExportError(f"text_llm.checkpoint = {cfg.checkpoint!r}: the chat frame for {model_type!r} "
                                 f"renders {ours!r}, the model's template {theirs!r}")
    stop_ids = sorted({i for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                   tokenizer.convert_tokens_to_ids("<|endoftext|>"))
                       if isinstance(i, int) and i != tokenizer.unk_token_id})
    out = tmp / TEXT_LLM_DIR
    # float16 embedding rows: half the file (the table is 0.5-0.9 GB for Qwen2.5's 152k tokens), memory-mapped.
    try:
        onnx = export_llm_onnx(model, out, quantize=None if cfg.quantize == "none" else cfg.quantize,
                               embed_dtype="float16")
    except ValueError as e:
        raise TextLlmExportError(f"text_llm.checkpoint = {cfg.checkpoint!r}: {e}") from None
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    entry = TextLlm(dir=TEXT_LLM_DIR, source=cfg.checkpoint, model_type=model_type, tokenizer=TOKENIZER_FILE,
                    frame=frame,
                    instructions=TEXT_INSTRUCTIONS, stop_ids=stop_ids, max_new_tokens=cfg.max_new_tokens, onnx=onnx)
    correlation = _verify(model, tokenizer, out, entry, MIN_CORRELATION[cfg.quantize])
    say(f"text LLM {cfg.checkpoint} ({model_type}, {cfg.quantize}) exported and verified in "
        f"{time.perf_counter() - started:.0f} s (next-token logits correlate >= {correlation:.4f} with PyTorch fp32)")
    return entry


def _verify(model: object, tokenizer: object, directory: Path, entry: TextLlm, least: float) -> float:
    """The served graph against the fp32 model on each ST prompt: the next-token logits after the prompt correlate
    >= `least` and the model's first token is among the graph's top 5 (int8 may swap near-ties: on a tiny
    random model most of 152k logits are near-ties), and the served decode writes a non-empty answer. Returns the
    lowest correlation."""
    import numpy as np
    import torch

    from tympan.runtime.text_llm import TextLLM

    try:
        served = TextLLM(directory, entry)
    except BundleError as e:
        raise TextLlmExportError(str(e)) from None
    lowest = 1.0
    for lang, instruction in entry.instructions["st"].items():
        ids = served.prompt_ids(instruction, CHECK_TEXT)
        expected = tokenizer(served.frame.render(instruction, CHECK_TEXT), add_special_tokens=False)  # type: ignore[operator]
        if ids != expected.input_ids:
            raise TextLlmExportError(f"text LLM: the bundle's tokenizer splits the {lang} prompt differently")
        with torch.no_grad():
            reference = model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()  # type: ignore[operator]
        logits, _ = served.llm.prefill(served.llm.embed(ids))
        if not np.isfinite(logits).all():
            raise TextLlmExportError(f"text LLM: the exported graph gives NaN or infinite logits for the {lang} prompt")
        correlation = float(np.corrcoef(logits, reference)[0, 1])
        lowest = min(lowest, correlation)
        if not correlation >= least or int(reference.argmax()) not in np.argsort(-logits)[:5]:
            raise TextLlmExportError(f"text LLM: the exported graph's next-token logits for the {lang} prompt "
                                     f"correlate {correlation:.4f} with the model's (at least {least} wanted for "
                                     f"{entry.onnx.dtype}, the model's token among the graph's top 5)")
        if not served.decode(served.answer(instruction, CHECK_TEXT).tokens):
            raise TextLlmExportError(f"text LLM: the exported graph gives no {lang} translation of {CHECK_TEXT!r}")
    return lowest
