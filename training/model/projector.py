"""The speech projector: encoder frames -> LLM input embeddings.

frame averaging (every k frames) -> linear to the projector width -> Transformer encoder
layers (pre-norm, padding-masked) -> linear to the LLM hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tympan.training.recipe import ProjectorConfig


def average_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average every `k` frames, ignoring padding: (B, T, D) -> (B, ceil(T/k), D).

    Pooled sums of the masked frames over pooled counts of real frames: whatever divisor the
    pooling uses cancels, and no Python arithmetic on shapes ends up frozen in an ONNX trace.
    """
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    pooled = F.avg_pool1d((x * mask[..., None]).transpose(1, 2), k, k, ceil_mode=True).transpose(1, 2)
    counts = F.avg_pool1d(mask[:, None, :], k, k, ceil_mode=True).transpose(1, 2)
    out_lengths = torch.div(lengths + k - 1, k, rounding_mode="floor")
    return pooled / counts.clamp(min=torch.finfo(x.dtype).tiny), out_lengths


class Block(nn.Module):
    """Pre-norm Transformer encoder layer with scaled-dot-product attention."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.out(a.transpose(1, 2).reshape(b, t, -1)))
        return x + self.dropout(self.ffn(self.norm2(x)))


class Projector(nn.Module):
    def __init__(self, cfg: ProjectorConfig, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.inp = nn.Linear(input_dim, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.ffn_size, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.outp = nn.Linear(cfg.width, output_dim)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        k = self.cfg.frame_average
        return torch.div(lengths + k - 1, k, rounding_mode="floor")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, input_dim), (B,) -> (B, T', output_dim), (B,); padded positions are zero."""
        x, lengths = average_frames(x, lengths, self.cfg.frame_average)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        # Boolean mask: True where attention is allowed (keys that are real frames).
        attn_mask = valid[:, None, None, :]
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, attn_mask)
        out = self.outp(self.norm(h))
        return out * valid[..., None].to(out.dtype), lengths
