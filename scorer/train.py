r"""Training, evaluation and threshold calibration of the early-exit model.

Loss: a weighted mean of the heads' cross-entropies, :math:`\mathcal{L} = \sum_j w_j\,\mathrm{CE}_j / \sum_j w_j`
(default :math:`w_j = 1`).

Depth-aware learning rates (shallower layers higher): block :math:`l` (0-based) trains at
:math:`\eta_l = \eta\,\gamma^{l}` with :math:`0 < \gamma \le 1`, the embeddings at :math:`\eta`, the heads at
their own rate. Early heads must become decisive from few layers, so their layers move more.

Two regimes: ``full`` fine-tunes backbone and heads (small encoders); ``frozen`` keeps the backbone fixed,
caches each head layer's pooled state once, and trains only the heads on the cache (decoders on a CPU).

Calibration replays an exit rule over validation probabilities of all heads for a grid of thresholds and keeps
the one with the fewest expected layers whose AUC is within ``budget`` of full depth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from scorer.exit_rules import ExitRule, exit_points
from scorer.model import ENCODER, EarlyExitModel

RULE_GRIDS: dict[str, tuple[str, Sequence[float]]] = {
    "ratio_trend": ("threshold", (1.5, 2.0, 3.0, 4.0, 6.0, 9.0, 14.0, 19.0, 49.0, 99.0)),
    "max_prob": ("threshold", (0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)),
    "entropy": ("threshold", (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)),
    "patience": ("patience", (1, 2, 3, 4)),
}


def depth_aware_groups(model: EarlyExitModel, lr: float, decay: float, head_lr: float) -> list[dict]:
    groups = [{"params": list(model.heads.parameters()), "lr": head_lr, "name": "heads"}]
    embeddings = model.backbone.embeddings if model.kind == ENCODER else model.backbone.embed_tokens
    groups.append({"params": list(embeddings.parameters()), "lr": lr, "name": "embeddings"})
    for layer, block in enumerate(model.blocks[: model.head_layers[-1]]):
        groups.append({"params": list(block.parameters()), "lr": lr * decay**layer, "name": f"block{layer}"})
    return groups


def joint_loss(logits: torch.Tensor, labels: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """``logits`` (heads, n, 2), ``labels`` (n,) -> weighted mean of per-head cross-entropies."""
    w = torch.tensor(weights if weights is not None else [1.0] * len(logits), dtype=logits.dtype,
                     device=logits.device)
    per_head = torch.stack([nn.functional.cross_entropy(head, labels) for head in logits])
    return (w * per_head).sum() / w.sum()


def batches(n: int, size: int, rng: np.random.Generator | None = None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, size):
        yield torch.from_numpy(order[start:start + size])


@torch.no_grad()
def cached_features(model: EarlyExitModel, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 16,
                    progress: bool = True) -> list[torch.Tensor]:
    """Pooled state at each head layer for every sample (backbone frozen), on the CPU."""
    device = next(model.parameters()).device
    parts: list[list[torch.Tensor]] = [[] for _ in model.head_layers]
    for rows in tqdm(list(batches(len(ids), batch_size)), desc="caching head-layer states", disable=not progress):
        for j, pooled in enumerate(model.pooled_per_head(ids[rows].to(device), mask[rows].to(device))):
            parts[j].append(pooled.float().cpu())
    return [torch.cat(p) for p in parts]


def train(model: EarlyExitModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, *,
          regime: str = "full", epochs: int = 2, batch_size: int = 16, lr: float = 5e-5, decay: float = 0.8,
          head_lr: float = 1e-3, weights: Sequence[float] | None = None, seed: int = 0,
          progress: bool = True) -> list[float]:
    """Train in place; returns the per-step losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    labels = labels.long()
    losses: list[float] = []
    if regime == "frozen":
        model.backbone.requires_grad_(False)
        features = cached_features(model, ids, mask, progress=progress)
        opt = torch.optim.AdamW(model.heads.parameters(), lr=head_lr, weight_decay=0.01)
        model.heads.train()
        for _ in tqdm(range(epochs), desc="training heads", disable=not progress):
            for rows in batches(len(labels), max(batch_size, 64), rng):
                logits = torch.stack([model.head_logits(j, f[rows].to(device)) for j, f in enumerate(features)])
                loss = joint_loss(logits, labels[rows].to(device), weights)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        model.eval()
        return losses
    if regime != "full":
        raise ValueError(f"regime must be 'full' or 'frozen', got {regime!r}")
    opt = torch.optim.AdamW(depth_aware_groups(model, lr, decay, head_lr), weight_decay=0.01)
    model.train()
    for epoch in range(epochs):
        for rows in tqdm(list(batches(len(labels), batch_size, rng)), desc=f"fine-tuning epoch {epoch + 1}",
                         disable=not progress):
            loss = joint_loss(model(ids[rows].to(device), mask[rows].to(device)), labels[rows].to(device), weights)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def head_probabilities(model: EarlyExitModel, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 32,
                       progress: bool = False) -> np.ndarray:
    """Click probability of every head at full depth, ``(n, heads)``."""
    device = next(model.parameters()).device
    out = []
    for rows in tqdm(list(batches(len(ids), batch_size)), desc="scoring all heads", disable=not progress):
        logits = model(ids[rows].to(device), mask[rows].to(device)).float()
        out.append(torch.softmax(logits, -1)[..., 1].T.cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) > 1 else float("nan")


def calibrate(probs: np.ndarray, labels: np.ndarray, head_layers: Sequence[int], rule: str = "ratio_trend",
              budget: float = 0.002) -> tuple[ExitRule, list[dict]]:
    """Choose the rule parameter that minimises the expected layers run subject to
    ``AUC(full) - AUC(exit) <= budget`` on validation data; returns the rule (the ``never`` rule when no
    parameter saves a layer within the budget) and the whole curve."""
    if rule not in RULE_GRIDS:
        raise ValueError(f"unknown rule {rule!r}; choose one of {sorted(RULE_GRIDS)}")
    from scorer.exit_rules import RULES

    field, grid = RULE_GRIDS[rule]
    layers = np.asarray(head_layers)
    auc_full = auc(labels, probs[:, -1])
    curve, best, best_layers = [], None, float(layers[-1])
    for value in grid:
        candidate = RULES[rule](**{field: value})
        exits = exit_points(probs, candidate)
        score = probs[np.arange(len(probs)), exits]
        point = {field: value, "auc": auc(labels, score), "auc_full": auc_full,
                 "mean_layers": float(layers[exits].mean()),
                 "expected_speedup": float(layers[-1] / layers[exits].mean())}
        curve.append(point)
        if auc_full - point["auc"] <= budget and point["mean_layers"] < best_layers:
            best, best_layers = candidate, point["mean_layers"]
    return (best or ExitRule()), curve  # ExitRule() never exits early: no threshold met the budget
