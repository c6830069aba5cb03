r"""Multi-head early-exit CTR model around any local Hugging Face encoder or decoder.

A binary classifier head (LayerNorm, Linear to {no-click, click}) sits on each layer in ``head_layers``
(1-based: head on layer ``l`` reads the hidden state after ``l`` transformer blocks). Inference runs the blocks
one at a time; after a block that carries a head, the head scores the still-active samples, the exit rule
(:mod:`scorer.exit_rules`) picks those that stop, and the batch shrinks to the rest (FastBERT-style). Blocks
past the last head are never run. Because a sample's computation never depends on the other samples in its
batch, its scores equal those of running it alone (up to float rounding; a test checks it).

Pooling: encoders (BERT family, e.g. MiniLM) use the first token or the mask-weighted mean; decoders (Llama /
Qwen family, e.g. SmolLM2) use the last real token (inputs are right-padded), whose causal state has seen the
whole prompt. Intermediate decoder states are not final-normed; the head's own LayerNorm handles their scale.

Decoders run through the base model only (no LM head: a 49k-row vocabulary projection per token would cost more
than the blocks it saves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from scorer.exit_rules import ExitRule

ENCODER, DECODER = "encoder", "decoder"


def backbone_kind(backbone: PreTrainedModel) -> str:
    """``encoder`` for BERT-like models (``embeddings`` + ``encoder.layer``), ``decoder`` for Llama-like ones
    (``embed_tokens`` + ``layers`` + ``rotary_emb``)."""
    if hasattr(backbone, "encoder") and hasattr(backbone, "embeddings"):
        return ENCODER
    if hasattr(backbone, "layers") and hasattr(backbone, "embed_tokens") and hasattr(backbone, "rotary_emb"):
        return DECODER
    raise ValueError(f"unsupported backbone {type(backbone).__name__}: need a BERT-like or Llama-like base model")


@dataclass
class LayerState:
    """What running the blocks one by one carries: hidden states and what attention needs, for the active rows."""

    hidden: torch.Tensor
    attention_mask: torch.Tensor  # (n, seq) 1 = real token
    block_mask: torch.Tensor | None  # the 4-D mask the blocks take (None: no padding, implicit)
    position_ids: torch.Tensor | None = None
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None

    def select(self, rows: torch.Tensor) -> LayerState:
        """The state of ``rows`` only (rotary tables and position ids are shared across rows)."""
        mask = self.block_mask
        if isinstance(mask, torch.Tensor) and mask.shape[0] > 1:
            mask = mask[rows]
        return LayerState(self.hidden[rows], self.attention_mask[rows], mask, self.position_ids,
                          self.position_embeddings)


@dataclass
class ExitResult:
    """Per sample: ``probs[i, j]`` click probability of head j (NaN after its exit), ``exit_head`` (0-based head
    index), ``exit_layer`` (1-based layer), and ``ctr`` (the probability of the exit head)."""

    probs: np.ndarray
    exit_head: np.ndarray
    exit_layer: np.ndarray
    ctr: np.ndarray


class EarlyExitModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, head_layers: list[int], pooling: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.kind = backbone_kind(backbone)
        n_layers = backbone.config.num_hidden_layers
        increasing = bool(head_layers) and sorted(set(head_layers)) == list(head_layers)
        if not increasing or head_layers[0] < 1 or head_layers[-1] > n_layers:
            raise ValueError(f"head_layers must be increasing layer numbers in 1..{n_layers}, got {head_layers}")
        self.head_layers = list(head_layers)
        self.pooling = pooling or ("last" if self.kind == DECODER else "mean")
        if self.pooling not in ("first", "mean", "last"):
            raise ValueError(f"pooling must be first, mean or last, got {self.pooling!r}")
        hidden = backbone.config.hidden_size
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2)) for _ in head_layers)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.encoder.layer if self.kind == ENCODER else self.backbone.layers

    @property
    def n_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    # ---- layer-by-layer execution ------------------------------------------------------------------------------
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LayerState:
        config = self.backbone.config
        if self.kind == ENCODER:
            hidden = self.backbone.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
            block_mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)
            return LayerState(hidden, attention_mask, block_mask)
        hidden = self.backbone.embed_tokens(input_ids)
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        block_mask = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask,
                                        past_key_values=None, position_ids=position_ids)
        rotary = self.backbone.rotary_emb(hidden, position_ids=position_ids)
        return LayerState(hidden, attention_mask, block_mask, position_ids, rotary)

    def step(self, state: LayerState, layer: int) -> LayerState:
        """Run block ``layer`` (0-based) on ``state``."""
        block = self.blocks[layer]
        if self.kind == ENCODER:
            state.hidden = block(state.hidden, attention_mask=state.block_mask)
        else:
            state.hidden = block(state.hidden, attention_mask=state.block_mask, position_ids=state.position_ids,
                                 position_embeddings=state.position_embeddings)
        if isinstance(state.hidden, tuple):  # older block implementations return (hidden, ...)
            state.hidden = state.hidden[0]
        return state

    def pool(self, state: LayerState) -> torch.Tensor:
        mask = state.attention_mask
        if self.pooling == "first":
            return state.hidden[:, 0]
        if self.pooling == "last":
            last = mask.sum(dim=1).clamp(min=1) - 1
            return state.hidden[torch.arange(len(last), device=last.device), last]
        weights = mask.unsqueeze(-1).to(state.hidden.dtype)
        return (state.hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def head_logits(self, j: int, pooled: torch.Tensor) -> torch.Tensor:
        return self.heads[j](pooled.to(self.heads[j][1].weight.dtype))

    # ---- training and full-depth scoring ---------------------------------------------------------------------
    def pooled_per_head(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Pooled hidden state at every head layer (no exit); the input of :meth:`forward` and of cached training."""
        state = self.start(input_ids, attention_mask)
        pooled = []
        for layer in range(self.head_layers[-1]):
            state = self.step(state, layer)
            if layer + 1 in self.head_layers:
                pooled.append(self.pool(state))
        return pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of every head, ``(heads, n, 2)`` (full depth; training and evaluation)."""
        pooled = self.pooled_per_head(input_ids, attention_mask)
        return torch.stack([self.head_logits(j, p) for j, p in enumerate(pooled)])

    # ---- early-exit inference --------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rule: ExitRule) -> ExitResult:
        """Score a batch with early exit: after each head, rows the rule releases leave the batch."""
        n, n_heads = len(input_ids), len(self.head_layers)
        probs = np.full((n, n_heads), np.nan, dtype=np.float64)
        exit_head = np.full(n, n_heads - 1)
        active = torch.arange(n)
        state = self.start(input_ids, attention_mask)
        j = 0
        for layer in range(self.head_layers[-1]):
            state = self.step(state, layer)
            if layer + 1 != self.head_layers[j]:
                continue
            p = torch.softmax(self.head_logits(j, self.pool(state)).float(), dim=-1)[:, 1].cpu().numpy()
            rows = active.numpy()
            probs[rows, j] = p
            if j == n_heads - 1:
                break
            fire = rule.decide(probs[rows, : j + 1])
            exit_head[rows[fire]] = j
            keep = torch.from_numpy(~fire)
            if not keep.any():
                break
            if not keep.all():
                active = active[keep]
                state = state.select(keep.nonzero().squeeze(1).to(state.hidden.device))
            j += 1
        ctr = probs[np.arange(n), exit_head]
        return ExitResult(probs, exit_head, np.array(self.head_layers)[exit_head], ctr)
