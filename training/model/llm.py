"""The LLM and its tokenizer: a pretrained causal LM, or a tiny random Llama with a local tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn

from tympan.errors import TympanError
from tympan.training.recipe import LLMConfig, LoraConfig, RandomLLMConfig

# ChatML, the format of SmolLM2-Instruct: the random tiny LLM uses it too.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class LLMLoadError(TympanError, RuntimeError):
    """The LLM or its tokenizer could not be loaded."""


def train_tokenizer(texts: Iterable[str], vocab_size: int):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer trained on `texts`, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def random_llm(cfg: RandomLLMConfig, vocab_size: int, eos_id: int, pad_id: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=4096,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        # Wide enough embeddings that a frozen random LM can express confident predictions
        # (at 0.02, logits stay within about +-1 and no LoRA can lower the loss much).
        initializer_range=cfg.init_std,
    )
    return LlamaForCausalLM(config)


def load_pretrained(cfg: LLMConfig, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a model id (local HF cache) or a local directory, optionally GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tympan.training.model.base_models import PREFIX, resolve

    if cfg.checkpoint.startswith(PREFIX):
        cfg = replace(cfg, checkpoint=resolve(cfg.checkpoint), gguf_file="")
    # Never download: a model id must already be in the local Hugging Face cache.
    kwargs: dict = {"local_files_only": True}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.checkpoint, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(cfg.checkpoint, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise LLMLoadError(f"cannot load llm.checkpoint = {cfg.checkpoint!r}: {e}") from None
    if cfg.gguf_file:
        # A GGUF load is dequantised to plain weights; drop the quantizer so it can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tokenizer.chat_template is None:
        raise LLMLoadError(f"llm.checkpoint = {cfg.checkpoint!r}: the tokenizer has no chat template")
    return model, tokenizer


def lora_config(cfg: LoraConfig):  # -> peft.LoraConfig
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
