r"""Multi-head early-exit CTR model around any local Hugging Face encoder or decoder.

A binary classifier head sits on each layer in ``head_layers`` (1-based: head on layer ``l`` reads the hidden
state after ``l`` transformer blocks). With ``n_features > 0`` every head also reads the pair's numeric
evidence :math:`x` (:mod:`scorer.features`, standardized with the training rows' mean and deviation), and layer
``0`` may carry a head that reads :math:`x` alone, before any block runs:

.. math::
    z_0 = W_0\,\hat x, \qquad z_l = W_l\,[\mathrm{LayerNorm}(h_l);\ \hat x] \quad (l \ge 1),
    \qquad P(\text{click}) = \mathrm{softmax}(z)_1

so the cheapest exit costs no transformer block at all, and every deeper head starts from the classical
evidence and adds what the text carries.

**Graph token** (the collaborative path "a", CoLLM-style; ``graph_dim > 0``): the user's and the candidate's
LightGCN vectors, unit-scaled and concatenated (:func:`scorer.features.graph_pairs`, zeros for a missing one),
are projected by a trained linear map into the backbone's input embedding space and added to the first token's
input embedding, :math:`e_0 \leftarrow e_0 + P\,[\hat u;\ \hat v] + c`, so every block can attend to the
collaborative signal beside the text. :math:`P` and :math:`c` start at zero: a model with a fresh graph token
scores exactly as the same model without one, and training (backbone frozen, gradients through it) moves it only
where validation AUC gains (:func:`scorer.train.train`, regime ``graph_token``).

Inference runs the blocks one at a time; after a block that carries a
head, the head scores the still-active samples, the calibration map of that head (:mod:`scorer.calibration`,
when set) turns its probability into a frequency, the exit rule (:mod:`scorer.exit_rules`) picks the samples
that stop, and the batch shrinks to the rest (FastBERT-style). Blocks past the last head are never run. Because
a sample's computation never depends on the other samples in its batch, its scores equal those of running it
alone (up to float rounding; a test checks it).

Pooling: encoders (BERT family, e.g. MiniLM) use the first token or the mask-weighted mean; decoders (Llama /
Qwen family, e.g. SmolLM2) use the last real token (inputs are right-padded), whose causal state has seen the
whole prompt. Intermediate decoder states are not final-normed; the head's own LayerNorm handles their scale.

Decoders run through the base model only (no LM head: a 49k-row vocabulary projection per token would cost more
than the blocks it saves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from scorer.calibration import HeadCalibration
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
    cut: np.ndarray | None = None  # rows answered from their deepest head so far because the deadline came


class ExitHead(nn.Module):
    """``Linear([LayerNorm(pooled); features])`` to {no-click, click}; ``hidden=0`` reads the features alone."""

    def __init__(self, hidden: int, n_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden) if hidden else None
        self.linear = nn.Linear(hidden + n_features, 2)

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, pooled: torch.Tensor | None, features: torch.Tensor | None) -> torch.Tensor:
        parts = [] if self.norm is None else [self.norm(pooled.to(self.linear.weight.dtype))]
        if features is not None:
            parts.append(features.to(self.linear.weight.dtype))
        return self.linear(torch.cat(parts, dim=-1))


class GraphToken(nn.Module):
    """``Linear(2·graph_dim -> hidden)``, zero at the start: what the pair's LightGCN vectors add to the first
    token's input embedding."""

    def __init__(self, graph_dim: int, hidden: int) -> None:
        super().__init__()
        self.graph_dim = graph_dim
        self.project = nn.Linear(2 * graph_dim, hidden)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.project(pairs.float())


class EarlyExitModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, head_layers: list[int], pooling: str | None = None,
                 n_features: int = 0, graph_dim: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.kind = backbone_kind(backbone)
        n_layers = backbone.config.num_hidden_layers
        increasing = bool(head_layers) and sorted(set(head_layers)) == list(head_layers)
        if not increasing or head_layers[0] < 0 or head_layers[-1] > n_layers:
            raise ValueError(f"head_layers must be increasing layer numbers in 0..{n_layers}, got {head_layers}")
        if head_layers[0] == 0 and n_features == 0:
            raise ValueError("a head on layer 0 reads only the numeric features: it needs n_features > 0")
        self.head_layers = list(head_layers)
        self.n_features = n_features
        self.pooling = pooling or ("last" if self.kind == DECODER else "mean")
        if self.pooling not in ("first", "mean", "last"):
            raise ValueError(f"pooling must be first, mean or last, got {self.pooling!r}")
        hidden = backbone.config.hidden_size
        self.heads = nn.ModuleList(ExitHead(hidden if layer else 0, n_features) for layer in head_layers)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.graph_token = GraphToken(graph_dim, hidden) if graph_dim else None
        self.calibration: HeadCalibration | None = None  # raw head probabilities until calibrated

    def set_feature_scale(self, features: torch.Tensor) -> None:
        """Standardize features with the mean and deviation of ``features`` (the training rows)."""
        self.feature_mean.copy_(features.float().mean(0))
        self.feature_std.copy_(features.float().std(0).clamp(min=1e-3))

    def scaled(self, features: torch.Tensor | None) -> torch.Tensor | None:
        if not self.n_features:
            return None
        if features is None or features.shape[-1] != self.n_features:
            raise ValueError(f"this model reads {self.n_features} features per row; got "
                             f"{None if features is None else tuple(features.shape)}")
        return (features.to(self.feature_mean.device).float() - self.feature_mean) / self.feature_std

    @property
    def graph_dim(self) -> int:
        return self.graph_token.graph_dim if self.graph_token is not None else 0

    def with_graph_token(self, hidden: torch.Tensor, graph: torch.Tensor | None) -> torch.Tensor:
        """Input embeddings with the graph token added to the first position (unchanged without one)."""
        if self.graph_token is None:
            return hidden
        if graph is None or graph.shape[-1] != 2 * self.graph_dim or len(graph) != len(hidden):
            raise ValueError(f"this model reads a graph pair of {2 * self.graph_dim} numbers per row; got "
                             f"{None if graph is None else tuple(graph.shape)}")
        token = self.graph_token(graph.to(hidden.device)).to(hidden.dtype)
        return torch.cat([hidden[:, :1] + token.unsqueeze(1), hidden[:, 1:]], dim=1)

    @property
    def block_heads(self) -> list[int]:
        """Indices of the heads that sit on a transformer block (every head but a layer-0 one)."""
        return [j for j, layer in enumerate(self.head_layers) if layer > 0]

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.encoder.layer if self.kind == ENCODER else self.backbone.layers

    @property
    def n_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    # ---- layer-by-layer execution ------------------------------------------------------------------------------
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, graph: torch.Tensor | None = None
              ) -> LayerState:
        """The state before the first block: input embeddings (with the graph token when the model has one)."""
        config = self.backbone.config
        if self.kind == ENCODER:
            hidden = self.with_graph_token(
                self.backbone.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids)), graph)
            block_mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)
            return LayerState(hidden, attention_mask, block_mask)
        hidden = self.with_graph_token(self.backbone.embed_tokens(input_ids), graph)
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
        """The block's pooled state in fp32 (a bf16 backbone's mean is summed in fp32)."""
        mask = state.attention_mask
        if self.pooling == "first":
            return state.hidden[:, 0].float()
        if self.pooling == "last":
            last = mask.sum(dim=1).clamp(min=1) - 1
            return state.hidden[torch.arange(len(last), device=last.device), last].float()
        weights = mask.unsqueeze(-1).float()
        return (state.hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def head_logits(self, j: int, pooled: torch.Tensor | None, scaled: torch.Tensor | None) -> torch.Tensor:
        """Logits of head ``j`` from its pooled state (None for a layer-0 head) and the scaled features."""
        return self.heads[j](pooled, scaled)

    # ---- training and full-depth scoring ---------------------------------------------------------------------
    def pooled_per_head(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        graph: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Pooled hidden state at every block head's layer (no exit): the input of :meth:`forward` and of
        cached training (a layer-0 head has none)."""
        state = self.start(input_ids, attention_mask, graph)
        pooled = []
        for layer in range(self.head_layers[-1]):
            state = self.step(state, layer)
            if layer + 1 in self.head_layers:
                pooled.append(self.pool(state))
        return pooled

    def logits_from(self, pooled: list[torch.Tensor], features: torch.Tensor | None) -> torch.Tensor:
        """``(heads, n, 2)`` from the block heads' pooled states and the raw features."""
        scaled = self.scaled(features)
        it = iter(pooled)
        return torch.stack([self.head_logits(j, next(it) if layer else None, scaled)
                            for j, layer in enumerate(self.head_layers)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                features: torch.Tensor | None = None, graph: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of every head, ``(heads, n, 2)`` (full depth; training and evaluation)."""
        return self.logits_from(self.pooled_per_head(input_ids, attention_mask, graph), features)

    def head_probability(self, j: int, logits: torch.Tensor) -> np.ndarray:
        """Click probability of head ``j`` from its logits, calibrated when the model has a calibration."""
        p = torch.softmax(logits.float(), dim=-1)[:, 1].cpu().numpy().astype(np.float64)
        return p if self.calibration is None else self.calibration.apply(j, p)

    # ---- early-exit inference --------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rule: ExitRule,
                features: torch.Tensor | None = None, deadline: float | None = None,
                graph: torch.Tensor | None = None) -> ExitResult:
        """Score a batch with early exit: after each head, rows the rule releases leave the batch. A layer-0
        head decides before any block runs; rows it releases never enter the backbone. ``graph``: the rows'
        LightGCN pairs, for a model with a graph token.

        ``deadline`` (a :func:`time.monotonic` instant) makes the answer anytime: at the first head reached at or
        after it, every row still active exits there, from the deepest head computed so far (``cut``)."""
        n, n_heads = len(input_ids), len(self.head_layers)
        probs = np.full((n, n_heads), np.nan, dtype=np.float64)
        exit_head = np.full(n, n_heads - 1)
        cut = np.zeros(n, dtype=bool)
        active = torch.arange(n)
        scaled = self.scaled(features)

        def decide(j: int, p: np.ndarray) -> torch.Tensor:
            """Record head ``j``'s probabilities of the active rows; the mask of rows that go on."""
            rows = active.numpy()
            probs[rows, j] = p
            if j == n_heads - 1:
                return torch.zeros(len(rows), dtype=torch.bool)
            fire = rule.decide(probs[rows, : j + 1])
            if deadline is not None and time.monotonic() >= deadline:
                cut[rows[~fire]] = True
                fire = np.ones(len(rows), dtype=bool)
            exit_head[rows[fire]] = j
            return torch.from_numpy(~fire)

        j = 0
        if self.head_layers[0] == 0:
            keep = decide(0, self.head_probability(0, self.head_logits(0, None, scaled)))
            active, j = active[keep], 1
            if not keep.any():
                return self._result(probs, exit_head, cut)
            input_ids, attention_mask, scaled = input_ids[keep], attention_mask[keep], scaled[keep]
            graph = None if graph is None else graph[keep]
        state = self.start(input_ids, attention_mask, graph)
        for layer in range(self.head_layers[-1]):
            state = self.step(state, layer)
            if layer + 1 != self.head_layers[j]:
                continue
            keep = decide(j, self.head_probability(j, self.head_logits(j, self.pool(state), scaled)))
            if not keep.any():
                break
            if not keep.all():
                active = active[keep]
                index = keep.nonzero().squeeze(1)
                state = state.select(index.to(state.hidden.device))
                scaled = None if scaled is None else scaled[index.to(scaled.device)]
            j += 1
        return self._result(probs, exit_head, cut)

    @torch.inference_mode()
    def released_at_layer0(self, features: torch.Tensor | None, rule: ExitRule) -> np.ndarray:
        """The rows :meth:`predict` with ``rule`` (and no deadline) releases at a layer-0 head, decided from the
        features alone, so a caller can skip building and tokenizing their prompts (all False without such a
        head, or when it is the only head). Rows are scored independently, so :meth:`predict` on these rows, with
        any placeholder tokens, gives them exactly the scores it gives them in any other batch."""
        n = 0 if features is None else len(features)
        if self.head_layers[0] != 0 or len(self.head_layers) == 1 or not n:
            return np.zeros(n, dtype=bool)
        p = self.head_probability(0, self.head_logits(0, None, self.scaled(features)))
        return rule.decide(p[:, None])

    def _result(self, probs: np.ndarray, exit_head: np.ndarray, cut: np.ndarray) -> ExitResult:
        ctr = probs[np.arange(len(probs)), exit_head]
        return ExitResult(probs, exit_head, np.array(self.head_layers)[exit_head], ctr, cut)
