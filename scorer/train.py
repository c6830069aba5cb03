r"""Training, evaluation and threshold calibration of the early-exit model.

Loss: a weighted mean of the heads' cross-entropies, :math:`\mathcal{L} = \sum_j w_j\,\mathrm{CE}_j / \sum_j w_j`
(default :math:`w_j = 1`).

Depth-aware learning rates (shallower layers higher): block :math:`l` (0-based) trains at
:math:`\eta_l = \eta\,\gamma^{l}` with :math:`0 < \gamma \le 1`, the embeddings at :math:`\eta`, the heads at
their own rate. Early heads must become decisive from few layers, so their layers move more.

Three regimes: ``full`` fine-tunes backbone and heads (small encoders, with a GPU or patience); ``frozen`` keeps
the backbone fixed, caches each head layer's pooled state once (one forward pass per sample), and trains only the
heads on the cache for many epochs (the default on a CPU). Both start the heads from the logistic regression on
the features (:func:`evidence_start`; the full regime did not until a 3,000-sample fine-tuning on Book-Crossing
left its features-only head at validation AUC 0.63 against the frozen regime's 0.72) and stop early on
validation AUC (mean over heads), the start counted as epoch 0: the state of the best epoch is kept. The third,
``graph_token``, trains a model's graph token (:mod:`scorer.model`) and its heads with the backbone frozen but
back-propagated through, from the heads it has (the frozen regime's), so its epoch 0 is the model without the
token.

Exit calibration replays an exit rule over validation probabilities of all heads (calibrated probabilities, as
served) for a grid of thresholds and keeps the one with the fewest expected layers whose AUC drop from full depth
is within ``budget`` *with 95% confidence*: the paired bootstrap bound of :func:`scorer.quality.auc_drop_bound`,
not the point estimate. A point estimate of a 0.002 drop on a few thousand rows is below its own noise (a
single AUC there is uncertain by ~0.01), while the paired bound is tight when early and full-depth scores agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from scorer.exit_rules import ExitRule, exit_points
from scorer.model import ENCODER, EarlyExitModel
from scorer.quality import auc, auc_drop_bound

RULE_GRIDS: dict[str, tuple[str, Sequence[float]]] = {
    "ratio_trend": ("threshold", (1.5, 2.0, 3.0, 4.0, 6.0, 9.0, 14.0, 19.0, 49.0, 99.0)),
    # every 0.01 from 0.55: on Book-Crossing's 1,500 validation rows the budget is met between 0.88 and 0.93 per
    # seed, which a coarser grid rounded up to 0.95 (~1 layer of depth given away); on ML-100K between 0.6 and 0.72
    "max_prob": ("threshold", tuple(round(0.55 + 0.01 * k, 2) for k in range(45))),
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
def pooled_states(model: EarlyExitModel, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 32,
                  progress: bool = True, graph: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Pooled state at each block head's layer for every sample (backbone frozen), on the CPU.

    The outputs are allocated once and filled in place: keeping each batch's small result alive between the
    forward passes' large temporaries fragmented the allocator's heap, and RSS grew ~25-80 MB per batch on
    ML-1M prompts (24 GiB at 12,000 rows) for ~50 KB of kept data."""
    device = next(model.parameters()).device
    hidden = model.backbone.config.hidden_size
    out = [torch.empty(len(ids), hidden) for _ in model.block_heads]
    for rows in tqdm(list(batches(len(ids), batch_size)), desc="caching head-layer states", disable=not progress):
        pairs = None if graph is None else graph[rows].to(device)
        for j, pooled in enumerate(model.pooled_per_head(ids[rows].to(device), mask[rows].to(device), pairs)):
            out[j][rows] = pooled.float().cpu()
    return out


@dataclass
class Cached:
    """What frozen-backbone head training reads: pooled states per block head, raw features, labels."""

    pooled: list[torch.Tensor]
    features: torch.Tensor | None
    labels: torch.Tensor


def evidence_start(model: EarlyExitModel, features: torch.Tensor, labels: torch.Tensor) -> None:
    r"""Start every head from the logistic regression of the labels on the scaled features (scikit-learn, L2,
    solved to convergence): head logits :math:`(-z/2, z/2)` with :math:`z = w \cdot x + b`, the pooled-state
    weights at zero. Each head then begins where the classical evidence alone takes it, and training only has
    to find what the text adds (SGD from a random start stopped short of that optimum on these features)."""
    from sklearn.linear_model import LogisticRegression

    x = model.scaled(features).cpu().numpy()
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(x, labels.cpu().numpy())
    w = torch.from_numpy(lr.coef_[0]).float()
    b = float(lr.intercept_[0])
    with torch.no_grad():
        for head in model.heads:
            weight = head.linear.weight
            weight.zero_()
            weight[0, -len(w):], weight[1, -len(w):] = -w / 2, w / 2
            head.linear.bias.copy_(torch.tensor([-b / 2, b / 2]))


def head_aucs(logits: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """AUC of each head's logits ``(heads, n, 2)``."""
    p = torch.softmax(logits.float(), -1)[..., 1].cpu().numpy()
    return np.array([auc(labels, row) for row in p])


def fit_heads(model: EarlyExitModel, train_set: Cached, val_set: Cached | None = None, *, epochs: int = 30,
              batch_size: int = 128, head_lr: float = 1e-3, weights: Sequence[float] | None = None, seed: int = 0,
              patience: int = 5, progress: bool = True) -> list[float]:
    """Train the heads (and the feature scale) on cached states, from the evidence start
    (:func:`evidence_start`) when the heads read features. With validation rows each head keeps its own best
    epoch by validation AUC, the start counted as epoch 0 (so no head ends below the logistic regression on its
    evidence), and training stops once every head went ``patience`` epochs without gain. Returns the per-step
    losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    for head in model.heads:  # a fresh, seeded start: seeds differ only here and in the batch order
        head.reset_parameters()
    if train_set.features is not None and model.n_features:
        model.set_feature_scale(train_set.features)
        evidence_start(model, train_set.features, train_set.labels)
    labels = train_set.labels.long()
    opt = torch.optim.AdamW(model.heads.parameters(), lr=head_lr, weight_decay=0.01)
    losses: list[float] = []
    n_heads = len(model.heads)
    best = [None] * n_heads
    best_auc, stale = np.full(n_heads, -np.inf), np.zeros(n_heads, dtype=int)

    def keep_best() -> None:
        model.heads.eval()
        with torch.no_grad():
            scores = head_aucs(model.logits_from(val_set.pooled, val_set.features), val_set.labels.numpy())
        for j, score in enumerate(scores):
            if score > best_auc[j]:
                best[j], best_auc[j], stale[j] = {k: v.clone() for k, v in model.heads[j].state_dict().items()}, \
                    score, 0
            else:
                stale[j] += 1

    if val_set is not None:
        keep_best()
    for _ in tqdm(range(epochs), desc="training heads", disable=not progress):
        model.heads.train()
        for rows in batches(len(labels), batch_size, rng):
            feats = None if train_set.features is None else train_set.features[rows]
            logits = model.logits_from([p[rows] for p in train_set.pooled], feats)
            loss = joint_loss(logits, labels[rows], weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if val_set is None:
            continue
        keep_best()
        if (stale >= patience).all():
            break
    for head, state in zip(model.heads, best, strict=True):
        if state is not None:
            head.load_state_dict(state)
    model.eval()
    return losses


def train(model: EarlyExitModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
          features: torch.Tensor | None = None, *, regime: str = "full", epochs: int = 2, batch_size: int = 16,
          lr: float = 5e-5, decay: float = 0.8, head_lr: float = 1e-3, weights: Sequence[float] | None = None,
          seed: int = 0, val: tuple | None = None, graph: torch.Tensor | None = None,
          progress: bool = True) -> list[float]:
    """Train in place on prompts ``ids``/``mask`` with ``features`` (None for a model without them) and, for a
    model with a graph token, the rows' LightGCN pairs ``graph``; ``val`` = (ids, mask, features, labels[, graph])
    for early stopping. Returns the per-step losses.

    Regimes: ``frozen`` (heads on cached states), ``full`` (backbone and heads, from the evidence start), and
    ``graph_token``: the graph token (at ``lr``) and the heads (at ``head_lr``) from the model's current heads
    (typically fitted by the frozen regime first), the backbone frozen but back-propagated through."""
    labels = labels.long()
    val_graph = val[4] if val is not None and len(val) > 4 else None
    if regime == "frozen":
        model.backbone.requires_grad_(False)
        train_set = Cached(pooled_states(model, ids, mask, progress=progress, graph=graph), features, labels)
        val_set = None if val is None else Cached(
            pooled_states(model, val[0], val[1], progress=progress, graph=val_graph),
            val[2], val[3])
        return fit_heads(model, train_set, val_set, epochs=epochs, batch_size=max(batch_size, 64),
                         head_lr=head_lr, weights=weights, seed=seed, progress=progress)
    if regime not in ("full", "graph_token"):
        raise ValueError(f"regime must be 'full', 'frozen' or 'graph_token', got {regime!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    if regime == "graph_token":
        if model.graph_token is None:
            raise ValueError("regime graph_token trains a model's graph token: build it with graph_dim > 0")
        model.backbone.requires_grad_(False)
        groups = [{"params": list(model.heads.parameters()), "lr": head_lr},
                  {"params": list(model.graph_token.parameters()), "lr": lr}]
    else:
        if features is not None and model.n_features:
            model.set_feature_scale(features)
            evidence_start(model, features, labels)
        groups = depth_aware_groups(model, lr, decay, head_lr)
        if model.graph_token is not None:
            groups.append({"params": list(model.graph_token.parameters()), "lr": lr, "name": "graph_token"})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    losses: list[float] = []
    best, best_auc = None, -np.inf

    def keep_if_best() -> None:
        nonlocal best, best_auc
        model.eval()
        probs = head_probabilities(model, *val[:3], graph=val_graph)
        score = float(np.mean([auc(val[3].numpy(), probs[:, j]) for j in range(probs.shape[1])]))
        if score > best_auc:
            best, best_auc = {k: v.detach().clone() for k, v in model.state_dict().items()}, score

    if val is not None:
        keep_if_best()  # the start counts as epoch 0, as in the frozen regime
    for epoch in range(epochs):
        model.train()
        if regime == "graph_token":  # a frozen backbone runs as it serves (no dropout): the heads were fitted so
            model.backbone.eval()
        for rows in tqdm(list(batches(len(labels), batch_size, rng)), desc=f"{regime} epoch {epoch + 1}",
                         disable=not progress):
            feats = None if features is None else features[rows].to(device)
            pairs = None if graph is None else graph[rows].to(device)
            loss = joint_loss(model(ids[rows].to(device), mask[rows].to(device), feats, pairs),
                              labels[rows].to(device), weights)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            opt.step()
            losses.append(loss.item())
        if val is not None:
            keep_if_best()
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return losses


@torch.no_grad()
def head_probabilities(model: EarlyExitModel, ids: torch.Tensor, mask: torch.Tensor,
                       features: torch.Tensor | None = None, batch_size: int = 32, progress: bool = False,
                       graph: torch.Tensor | None = None) -> np.ndarray:
    """Raw (uncalibrated) click probability of every head at full depth, ``(n, heads)`` (filled in place, as
    :func:`pooled_states` is); ``graph``: the rows' LightGCN pairs for a model with a graph token."""
    device = next(model.parameters()).device
    out = np.empty((len(ids), len(model.head_layers)), dtype=np.float64)
    for rows in tqdm(list(batches(len(ids), batch_size)), desc="scoring all heads", disable=not progress):
        feats = None if features is None else features[rows]
        logits = model(ids[rows].to(device), mask[rows].to(device), feats,
                       None if graph is None else graph[rows]).float()
        out[rows.numpy()] = torch.softmax(logits, -1)[..., 1].T.cpu().numpy()
    return out


@torch.no_grad()
def cached_probabilities(model: EarlyExitModel, data: Cached) -> np.ndarray:
    """Raw click probability of every head from cached states, ``(n, heads)``."""
    return torch.softmax(model.logits_from(data.pooled, data.features).float(), -1)[..., 1].T.numpy()\
        .astype(np.float64)


def new_users_at_layer0(probs: np.ndarray, labels: np.ndarray, new_user: np.ndarray, head_layers: Sequence[int],
                        min_rows: int = 100, level: float = 0.95) -> tuple[bool, dict]:
    """Whether new users' rows (``new_user``: no reaction known) should answer at the layer-0 head, and the
    evidence. A new user's prompt holds no history, so the blocks read only the candidate's text beside the
    evidence the layer-0 head already has, and heads fitted mostly on returning users' rows can read that text
    worse than the evidence alone (Book-Crossing, 2,000 first impressions: layer-0 head 0.608 AUC, last head
    0.560). A model choice on the validation rows, as the heads' epochs are chosen: yes when there are at least
    ``min_rows`` of them with both labels and the layer-0 head's AUC over them (``probs`` calibrated, as served)
    is at least the last head's. The exit rule's certification (a paired bound within the 0.002 budget) cannot
    decide it: on 179 rows that bound is ~0.1 whichever head is better; it is recorded beside (``level``)."""
    rows = np.asarray(new_user, dtype=bool)
    y, p = labels[rows], probs[rows]
    if head_layers[0] != 0 or len(head_layers) == 1 or rows.sum() < min_rows or len(np.unique(y)) < 2:
        return False, {"n_rows": int(rows.sum())}
    evidence = {"n_rows": int(rows.sum()), "auc_layer0": auc(y, p[:, 0]), "auc_last": auc(y, p[:, -1]),
                "auc_drop_bound": auc_drop_bound(y, p[:, -1], p[:, 0], level)}
    return bool(evidence["auc_layer0"] >= evidence["auc_last"]), evidence


def served_exits(probs: np.ndarray, rule: ExitRule, new_user: np.ndarray | None = None) -> np.ndarray:
    """The 0-based head each row answers at as the scorer serves it: the rule's :func:`exit_points`, and the
    layer-0 head for the rows of ``new_user`` (pass it only when the model pins new users there)."""
    exits = exit_points(probs, rule)
    if new_user is not None:
        exits[np.asarray(new_user, dtype=bool)] = 0
    return exits


def calibrate(probs: np.ndarray, labels: np.ndarray, head_layers: Sequence[int], rule: str = "ratio_trend",
              budget: float = 0.002, level: float = 0.95) -> tuple[ExitRule, list[dict]]:
    """Choose the rule parameter that minimises the expected layers run subject to
    ``bound(AUC(full) - AUC(exit)) <= budget`` on validation data (``probs`` calibrated, as served; the bound
    at ``level`` of :func:`~scorer.quality.auc_drop_bound`); returns the rule (the ``never`` rule when no
    parameter saves a layer within the budget) and the whole curve with each point's bound."""
    if rule not in RULE_GRIDS:
        raise ValueError(f"unknown rule {rule!r}; choose one of {sorted(RULE_GRIDS)}")
    from scorer.exit_rules import RULES

    field, grid = RULE_GRIDS[rule]
    layers = np.asarray(head_layers)
    full = probs[:, -1]
    auc_full = auc(labels, full)
    curve, best, best_layers = [], None, float(layers[-1])
    for value in grid:
        candidate = RULES[rule](**{field: value})
        exits = exit_points(probs, candidate)
        score = probs[np.arange(len(probs)), exits]
        mean_layers = float(layers[exits].mean())
        point = {field: value, "auc": auc(labels, score), "auc_full": auc_full, "mean_layers": mean_layers,
                 "expected_speedup": float(layers[-1] / max(mean_layers, 0.5)),
                 "auc_drop_bound": auc_drop_bound(labels, full, score, level), "n_rows": len(labels)}
        curve.append(point)
        if point["auc_drop_bound"] <= budget and mean_layers < best_layers:
            best, best_layers = candidate, mean_layers
    return (best or ExitRule()), curve  # ExitRule() never exits early: no threshold met the budget
