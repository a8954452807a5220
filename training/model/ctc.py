"""The CTC bridge: encoder frames -> CTC posteriors over the LLM's vocabulary -> LLM input embeddings.

The projector kind "ctc" (`projector.kind`). Frames are stacked (`frame_average` of them: 50 Hz
-> 12.5 Hz), a small pre-norm Transformer reads them, and a classifier scores every frame against
the LLM's own input-embedding rows (frozen) plus a blank, so what the head predicts lives in the
embedding space the LLM reads. It trains with the CTC loss against the LLM tokens of the spoken-form
transcript (tympan/spoken.py): a dense signal, and no LLM forward.

The bridge turns the posteriors into what the LLM reads, at about token rate: frames the blank
dominates (p_blank >= `blank_threshold`) are dropped; consecutive kept frames with the same best
label form one segment (CTC's own collapse rule); each segment is the mean of its frames' vectors,
and a frame's vector is either the posterior-weighted sum of its `top_k` best embedding rows
(blank left out, weights renormalised) or, with `bridge = "top1"`, the best row itself. A one-hot
posterior therefore gives exactly that token's embedding. Everything is fixed-shape tensor algebra
(argmax, cumulative sums, a segment matrix) so the bridge exports to ONNX inside the encoder graph,
dynamic in batch and time.

Only the tokens of `vocab_ids` (LLM ids: those of the spoken-form corpus text, plus short letter
tokens so any word can be spelt) are scored: a tenth of the vocabulary, so cheaper to train and run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tympan.training.model.projector import Block
from tympan.training.recipe import ProjectorConfig


def stack_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate every `k` frames: (B, T, D) -> (B, ceil(T/k), k*D); padding frames are zeroed.

    The time axis is padded by k-1 zero frames and cut to a multiple of k with shape arithmetic
    on tensors, so an ONNX trace stays dynamic in T.
    """
    b, _, d = x.shape
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    x = F.pad(x * valid[..., None].to(x.dtype), (0, 0, 0, k - 1))
    steps = torch.div(x.shape[1], k, rounding_mode="floor")
    x = x[:, : steps * k].reshape(b, -1, k * d)
    return x, torch.div(lengths + k - 1, k, rounding_mode="floor")


class CtcBridge(nn.Module):
    """Projector of kind "ctc": `forward` gives the LLM's speech embeddings, `logits` the CTC scores."""

    def __init__(self, cfg: ProjectorConfig, input_dim: int, output_dim: int, vocab_ids: torch.Tensor) -> None:
        super().__init__()
        if vocab_ids.ndim != 1 or vocab_ids.numel() == 0:
            raise ValueError(f"vocab_ids must be a non-empty 1-D tensor of LLM token ids, got shape "
                             f"{tuple(vocab_ids.shape)}")
        self.cfg = cfg
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.inp = nn.Linear(cfg.frame_average * input_dim, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.ffn_size, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.to_embedding = nn.Linear(cfg.width, output_dim)
        self.embedding_norm = nn.LayerNorm(output_dim)
        # LLM ids of the scored tokens (saved); their frozen embedding rows (not saved: `tie` copies
        # them from the LLM, so a checkpoint never holds a second copy of the LLM's table).
        self.register_buffer("vocab_ids", vocab_ids.to(torch.long).clone())
        self.register_buffer("table", torch.zeros(vocab_ids.numel(), output_dim), persistent=False)
        # Embedding rows share a large common direction and differ in norm (SmolLM2: 1.8-7.5), so raw
        # dot products favour some tokens: a learned scale and a bias per token correct for that. The
        # scale starts at 4 / sqrt(width): at 1 / sqrt(width) every token scores about the same, only
        # the blank wins, and Adam takes thousands of steps to grow the scale (seen: all-blank output
        # after 500 steps on 1.7 h of speech).
        self.log_scale = nn.Parameter(torch.full((), math.log(4.0)))
        self.bias = nn.Parameter(torch.zeros(vocab_ids.numel()))
        # The blank has its own vector: reusing a real token's row (e.g. bos) would tie it to a live token.
        self.blank = nn.Parameter(torch.randn(output_dim) * output_dim**-0.5)
        self.blank_bias = nn.Parameter(torch.zeros(()))
        self.tied = False

    @property
    def blank_id(self) -> int:
        return int(self.vocab_ids.numel())

    def tie(self, embedding_weight: torch.Tensor) -> None:
        """Take the scored tokens' rows of the LLM's input-embedding matrix (frozen)."""
        if embedding_weight.shape[1] != self.output_dim:
            raise ValueError(f"embedding rows are {embedding_weight.shape[1]}-dim, the bridge gives {self.output_dim}")
        if int(self.vocab_ids.max()) >= embedding_weight.shape[0]:
            raise ValueError(f"vocab_ids reach {int(self.vocab_ids.max())}, "
                             f"the LLM has {embedding_weight.shape[0]} rows")
        with torch.no_grad():
            self.table.copy_(embedding_weight.detach()[self.vocab_ids].to(self.table.dtype))
        self.tied = True

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames after stacking (the CTC frames): an upper bound of the bridge's segments."""
        k = self.cfg.frame_average
        return torch.div(lengths + k - 1, k, rounding_mode="floor")

    def logits(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, input_dim), (B,) -> CTC logits (B, T', V'+1) with the blank last, and frame counts (B,)."""
        if not self.tied:
            raise RuntimeError("CtcBridge.tie(llm_embedding_weight) must be called before use")
        x, lengths = stack_frames(x, lengths, self.cfg.frame_average)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, valid[:, None, None, :])
        e = self.embedding_norm(self.to_embedding(self.norm(h)))
        scale = self.log_scale.exp() / math.sqrt(self.output_dim)
        tokens = scale * (e @ self.table.T) + self.bias
        blank = scale * (e @ self.blank)[..., None] + self.blank_bias
        return torch.cat([tokens, blank], dim=-1), lengths

    def top_labels(self, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each frame's `k` best labels as LLM token ids (B, T, k), their log-probabilities, and the blank's (B, T):
        what the beam search with an n-gram LM reads (tympan/runtime/ctc_lm.py)."""
        log_probs = logits.float().log_softmax(-1)
        values, indices = log_probs[..., :-1].topk(min(k, self.blank_id), dim=-1)
        return self.vocab_ids[indices], values, log_probs[..., -1]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, input_dim), (B,) -> the LLM's speech embeddings (B, S, output_dim) zero-padded, and S (B,)."""
        return self.segments(*self.logits(x, lengths))

    def segments(self, logits: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The bridge over logits already computed (training takes the CTC loss on the same logits)."""
        top_k = min(self.cfg.top_k, self.blank_id)  # a Python int: fixed in the exported graph
        return bridge(logits, frames, self.table, self.cfg.blank_threshold, top_k, self.cfg.bridge)


def bridge(
    logits: torch.Tensor, lengths: torch.Tensor, table: torch.Tensor, blank_threshold: float, top_k: int, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC logits (B, T, V+1), blank last -> segment embeddings (B, S, H) zero-padded, and segment counts (B,).

    `top_k` must not exceed V.
    See the module docstring. S is the largest segment count of the batch; a row with no kept
    frame (all blank) has 0 segments.
    """
    t = logits.shape[1]
    probs = logits.float().softmax(-1)
    p_blank = probs[..., -1]
    best = probs.argmax(-1)
    frame = torch.arange(t, device=logits.device)[None, :]
    keep = (p_blank < blank_threshold) & (frame < lengths[:, None])
    previous_keep = F.pad(keep, (1, 0))[:, :-1]
    previous_best = F.pad(best, (1, 0), value=-1)[:, :-1]
    starts = keep & (~previous_keep | (best != previous_best))
    segment = starts.long().cumsum(-1) - 1  # the segment of each kept frame
    counts = starts.long().sum(-1)
    # Segment matrix (B, T, T): row s has 1 at the frames of segment s (at most T segments).
    member = (segment[:, None, :] == frame[:, :, None]) & keep[:, None, :]
    member = member.to(table.dtype)
    member = member / member.sum(-1, keepdim=True).clamp(min=1.0)
    tokens = probs[..., :-1]
    if mode == "top1":
        vectors = table[tokens.argmax(-1)]
    else:
        weights, ids = tokens.topk(top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)
        vectors = (weights.to(table.dtype)[..., None] * table[ids]).sum(-2)
    out = member @ vectors
    return out[:, : counts.max()], counts


def ctc_loss_sum(logits: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]], blank: int) -> torch.Tensor:
    """Summed CTC loss of a batch (targets as indices into the scored vocabulary); impossible
    alignments (more labels than frames allow) count 0 instead of infinity."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V+1)
    flat = torch.tensor([i for tgt in targets for i in tgt], dtype=torch.long)
    target_lengths = torch.tensor([len(tgt) for tgt in targets], dtype=torch.long)
    return F.ctc_loss(log_probs, flat, lengths.cpu(), target_lengths, blank=blank, reduction="sum",
                      zero_infinity=True)


def greedy_ids(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Greedy CTC decoding: best label per frame, repeats merged, blanks dropped (indices into the
    scored vocabulary)."""
    blank = logits.shape[-1] - 1
    out: list[list[int]] = []
    for row, n in zip(logits.argmax(-1).tolist(), lengths.tolist(), strict=True):
        ids: list[int] = []
        previous = blank
        for label in row[:n]:
            if label != previous and label != blank:
                ids.append(label)
            previous = label
        out.append(ids)
    return out
