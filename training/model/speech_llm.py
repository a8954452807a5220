"""The speech LLM: frozen encoder -> projector -> LLM (with LoRA), prompts spliced in embedding space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tympan.manifest import Example
from tympan.runtime.ctc_lm import TOP_LABELS
from tympan.runtime.decode import Decoded, DecodeSettings, Stop, greedy_decode
from tympan.training.model.ctc import CtcBridge, ctc_loss_sum, greedy_ids
from tympan.training.model.ctc_targets import CtcVocab, targets, text_of
from tympan.training.model.encoder import SpeechEncoder, encode_audio
from tympan.training.model.projector import Projector
from tympan.training.model.prompt import PromptBuilder
from tympan.training.model.simulate import ErrorProfile, embed, simulate
from tympan.training.model.step_llm import CheckpointLLM
from tympan.training.recipe import AugmentConfig, Recipe

IGNORE = -100

# What fills the content slot: projected speech (L, H) or the source text.
Content = torch.Tensor | str


@dataclass
class Assembled:
    inputs_embeds: torch.Tensor  # (B, T, H)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor | None  # (B, T)


def pad_sequences(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i, D) -> (B, T, D) zero-padded, and lengths (B,)."""
    lengths = torch.tensor([s.shape[0] for s in seqs])
    out = seqs[0].new_zeros(len(seqs), int(lengths.max()), seqs[0].shape[1])
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out, lengths


def mask_frames(hidden: torch.Tensor, lengths: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment-style time and feature masking on encoder outputs (zeroed spans)."""
    hidden = hidden.clone()
    b, _, d = hidden.shape
    for i in range(b):
        n = int(lengths[i])
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, cfg.time_mask_max + 1, (1,), generator=gen))
            if 0 < w < n:
                s = int(torch.randint(0, n - w + 1, (1,), generator=gen))
                hidden[i, s : s + w] = 0
        for _ in range(cfg.feature_masks):
            w = int(torch.randint(0, cfg.feature_mask_max + 1, (1,), generator=gen))
            if 0 < w < d:
                s = int(torch.randint(0, d - w + 1, (1,), generator=gen))
                hidden[i, :n, s : s + w] = 0
    return hidden


@torch.no_grad()
def ctc_transcribe(model: CtcBridge, tokenizer: Any, vocab: CtcVocab, hidden: Sequence[torch.Tensor]) -> list[str]:
    """Greedy CTC text (what the bridge heard) of encoder outputs, 16 at a time."""
    model.eval()
    out: list[str] = []
    for i in range(0, len(hidden), 16):
        padded, lengths = pad_sequences(list(hidden[i : i + 16]))
        logits, frames = model.logits(padded, lengths)
        out += [text_of(tokenizer, vocab, ids) for ids in greedy_ids(logits, frames)]
    return out


def ctc_posteriors(model: CtcBridge, hidden: Sequence[torch.Tensor], k: int = TOP_LABELS
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each utterance's frames as the beam search reads them: top-k LLM ids, their log p, the blank's log p."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(hidden), 16):
            padded, lengths = pad_sequences(list(hidden[i : i + 16]))
            logits, frames = model.logits(padded, lengths)
            ids, logp, blank = model.top_labels(logits, k)
            out += [(ids[j, :n].numpy(), logp[j, :n].numpy(), blank[j, :n].numpy())
                    for j, n in enumerate(frames.tolist())]
    return out


class SpeechLLM(nn.Module):
    def __init__(self, cfg: Recipe, encoder: SpeechEncoder, projector: Projector | CtcBridge, llm: nn.Module,
                 tokenizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder(tokenizer, cfg.prompt)
        # With the CTC bridge: how text is made to look like the bridge's output while training (the
        # head's measured errors; the trainer sets them), and the CTC loss's weight beside the LM loss.
        self.errors = ErrorProfile()
        self.ctc_weight = 0.0
        self.vocab = (CtcVocab(tuple(projector.vocab_ids.tolist()), len(tokenizer))
                      if isinstance(projector, CtcBridge) else None)

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def text_content(self, text: str, gen: torch.Generator | None = None) -> torch.Tensor:
        """The content slot for a text: its token embeddings, or with the CTC bridge, what the bridge gives
        for its spoken form: simulated with the head's errors when `gen` is given (training), exact else."""
        if self.vocab is None:
            return self.embed_ids(self.prompts.content_ids(text))
        assert isinstance(self.projector, CtcBridge)
        tokens = targets(self.tokenizer, self.vocab, text)
        if gen is None:
            profile = ErrorProfile(peak_mean=1.0, peak_std=0.0)
            rng = np.random.default_rng(0)
        else:
            profile = self.errors
            rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
        ids, weights = simulate(tokens, profile, self.vocab.blank, min(self.cfg.projector.top_k, self.vocab.blank),
                                rng)
        return embed(ids, weights, self.projector.table)

    def embed_ids(self, ids: Sequence[int]) -> torch.Tensor:
        emb = self.llm.get_input_embeddings()
        return emb(torch.tensor(list(ids), dtype=torch.long, device=self.device))

    def encode(self, audios: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Waveforms -> encoder hidden states, one (T_i, D) tensor each."""
        for a in audios:
            self.encoder.check_duration(len(a), "audio")
        return encode_audio(self.encoder, audios, self.device)

    def project(
        self, hidden: Sequence[torch.Tensor], augment: AugmentConfig | None = None, gen: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Encoder hidden states -> LLM input embeddings, one (L_i, H) tensor each."""
        padded, lengths = pad_sequences([h.to(self.device) for h in hidden])
        if augment is not None and gen is not None:
            padded = mask_frames(padded, lengths, augment, gen)
        out, out_lengths = self.projector(padded, lengths.to(self.device))
        return [out[i, : int(n)] for i, n in enumerate(out_lengths)]

    def instruction(self, ex: Example) -> str:
        return self.prompts.instruction(ex.task, ex.tgt_lang, ex.question)

    def assemble(
        self,
        contents: Sequence[Content],
        instructions: Sequence[str],
        targets: Sequence[str] | None = None,
    ) -> Assembled:
        """Build padded input embeddings (and labels masked on everything but the answer)."""
        rows: list[torch.Tensor] = []
        labels: list[list[int]] = []
        for i, (content, instruction) in enumerate(zip(contents, instructions, strict=True)):
            ids = self.prompts.prompt(instruction)
            body = self.text_content(content) if isinstance(content, str) else content
            emb = self.llm.get_input_embeddings().weight
            parts = [self.embed_ids(ids.prefix), body.to(emb.dtype), self.embed_ids(ids.suffix)]
            row_labels = [IGNORE] * (len(ids.prefix) + body.shape[0] + len(ids.suffix))
            if targets is not None:
                target = self.prompts.target_ids(targets[i])
                parts.append(self.embed_ids(target))
                row_labels += target
            rows.append(torch.cat(parts))
            labels.append(row_labels)
        width = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[1]
        embeds = rows[0].new_zeros(len(rows), width, hidden)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        lab = torch.full((len(rows), width), IGNORE, dtype=torch.long, device=self.device)
        for i, (r, rl) in enumerate(zip(rows, labels, strict=True)):
            n = r.shape[0]
            embeds[i, :n] = r
            mask[i, :n] = 1
            lab[i, :n] = torch.tensor(rl, dtype=torch.long, device=self.device)
        return Assembled(embeds, mask, lab if targets is not None else None)

    def forward(
        self, examples: Sequence[Example], hidden: Sequence[torch.Tensor] | None = None,
        gen: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Summed token loss of a one-modality batch: speech (encoder `hidden` states) or text.

        A sum, not a mean: the trainer divides by the target tokens of the whole optimizer
        step, so every answer token weighs the same whatever batch it came in.
        """
        if hidden is not None and isinstance(self.projector, CtcBridge) and self.ctc_weight:
            return self._bridge_loss_sum(examples, hidden, gen)
        if hidden is not None:
            augment = self.cfg.train.augment if self.training else None
            contents: list[Content] = list(self.project(hidden, augment, gen))
        elif self.vocab is not None:
            contents = [self.text_content(e.text or "", gen) for e in examples]
        else:
            contents = [e.text or "" for e in examples]
        return self.loss_sum(contents, examples)

    def _bridge_loss_sum(self, examples: Sequence[Example], hidden: Sequence[torch.Tensor],
                         gen: torch.Generator | None) -> torch.Tensor:
        """LM loss over the bridge's output plus `ctc_weight` times the CTC loss of its head, the CTC
        loss scaled to the LM loss's number of tokens (so the weight means the same for any batch)."""
        assert isinstance(self.projector, CtcBridge) and self.vocab is not None
        padded, lengths = pad_sequences([h.to(self.device) for h in hidden])
        if self.training and gen is not None:
            padded = mask_frames(padded, lengths, self.cfg.train.augment, gen)
        logits, frames = self.projector.logits(padded, lengths.to(self.device))
        out, counts = self.projector.segments(logits, frames)
        lm = self.loss_sum([out[i, : int(n)] for i, n in enumerate(counts)], examples)
        labels = [targets(self.tokenizer, self.vocab, e.transcript or "") for e in examples]
        ctc_tokens = max(1, sum(len(t) for t in labels))
        ctc = ctc_loss_sum(logits, frames, labels, self.vocab.blank)
        return lm + self.ctc_weight * ctc * (self.target_tokens(examples) / ctc_tokens)

    def target_tokens(self, examples: Sequence[Example]) -> int:
        """How many tokens the loss is taken over (answers and their end-of-turn tokens)."""
        return sum(len(self.prompts.target_ids(e.target)) for e in examples)

    def loss_sum(self, contents: Sequence[Content], examples: Sequence[Example]) -> torch.Tensor:
        batch = self.assemble(contents, [self.instruction(e) for e in examples], [e.target for e in examples])
        assert batch.labels is not None
        # Position t predicts token t+1. Logits only where there is an answer token to predict: the LM
        # head over 49k tokens at every prompt, speech and padding position was ~1/5 of a step's work.
        answer = batch.labels[:, 1:] != IGNORE
        keep = torch.nn.functional.pad(answer, (0, 1))
        logits = self.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                          logits_to_keep=keep).logits
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), batch.labels[:, 1:][answer], reduction="sum")

    def greedy(self, content: Content, instruction: str, settings: DecodeSettings) -> Decoded:
        """Greedy tokens through the runtime's decode loop, under `settings` and the config's own limit: the
        tokens a bundle exported from this model gives (its prompt is spliced as `assemble` splices it)."""
        llm = CheckpointLLM(self.llm)
        ids = self.prompts.prompt(instruction)
        if isinstance(content, str):
            content = self.text_content(content) if self.vocab is not None else content
        elif content.shape[0] == 0 and self.vocab is not None:
            return Decoded([], Stop.NOTHING_HEARD)  # as the runtime answers a bridge that heard nothing
        body = (llm.embed(self.prompts.content_ids(content)) if isinstance(content, str)
                else content.detach().to(llm.dtype).float().cpu().numpy())
        embeds = np.concatenate([llm.embed(ids.prefix), body, llm.embed(ids.suffix)])
        return greedy_decode(llm, embeds, self.prompts.stop_ids, settings.capped(self.cfg.prompt.max_new_tokens))

    def generate(
        self, contents: Sequence[Content], instructions: Sequence[str], max_new_tokens: int | None = None
    ) -> list[list[int]]:
        """The model's own greedy tokens for each input (no loop guard; the stop token excluded)."""
        settings = DecodeSettings.unguarded(max_new_tokens or self.cfg.prompt.max_new_tokens)
        return [self.greedy(c, i, settings).tokens for c, i in zip(contents, instructions, strict=True)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()
