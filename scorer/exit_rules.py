r"""Early-exit rules: after each classifier head, decide per sample whether to stop (pure numpy).

Every rule sees, for a batch of ``n`` samples, the click probabilities :math:`p_1..p_h` of the ``h`` heads
evaluated so far (array ``(n, h)``) and answers, per sample, "exit after head ``h``?". The model always exits
at its last head, so a rule never has to. Notation: odds :math:`r_l = p_l / (1-p_l)` (the ratio of the
positive to the negative probability, as in OptiRAG-Rec) and confidence :math:`c_l = |\ln r_l|`.

- :class:`RatioTrendRule` (the paper's, as we read it): exit when :math:`c_h \ge \ln\tau` and the trend agrees:
  head ``h`` predicts the same class as head ``h-1`` and :math:`c_h \ge c_{h-1}` (confidence not falling).
  A first head (``h = 1``) has no trend and exits only when ``first_head_exits`` is set.
- :class:`MaxProbRule`: :math:`\max(p_h, 1-p_h) \ge \tau`.
- :class:`EntropyRule` (DeeBERT): binary entropy :math:`H(p_h) \le \tau` nats.
- :class:`PatienceRule` (PABEE): the last ``k`` heads predict the same class.
- :class:`FixedHeadRule`: everyone exits at one head (forced depth).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

EPS = 1e-7


def _confidence(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.abs(np.log(p / (1 - p)))


@dataclass(frozen=True)
class ExitRule:
    """Base, and the ``never`` rule (full depth): ``decide(probs)`` -> bool array, one per sample."""

    name: ClassVar[str] = "never"

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return np.zeros(len(probs), dtype=bool)

    def relaxed(self, keep: float) -> ExitRule:
        """The rule with its confidence bar lowered to the share ``keep`` in [0, 1] of the way from "anything
        exits" (0) to the calibrated bar (1): what the SLO mode applies when queueing threatens the latency aim.
        Rules without a confidence bar (never, patience, fixed head) stay as they are."""
        return self

    def to_dict(self) -> dict:
        return {"rule": self.name, **{k: v for k, v in self.__dict__.items()}}


@dataclass(frozen=True)
class RatioTrendRule(ExitRule):
    threshold: float = 4.0  # odds ratio tau > 1 (4.0 = 80% / 20%)
    first_head_exits: bool = False
    name: ClassVar[str] = "ratio_trend"

    def relaxed(self, keep: float) -> ExitRule:
        return replace(self, threshold=float(np.exp(np.log(self.threshold) * min(max(keep, 0.0), 1.0))))

    def decide(self, probs: np.ndarray) -> np.ndarray:
        conf = _confidence(probs[:, -1])
        sure = conf >= np.log(self.threshold)
        if probs.shape[1] == 1:
            return sure & self.first_head_exits
        same_class = (probs[:, -1] >= 0.5) == (probs[:, -2] >= 0.5)
        rising = conf >= _confidence(probs[:, -2])
        return sure & same_class & rising


@dataclass(frozen=True)
class MaxProbRule(ExitRule):
    threshold: float = 0.9
    name: ClassVar[str] = "max_prob"

    def decide(self, probs: np.ndarray) -> np.ndarray:
        p = probs[:, -1]
        return np.maximum(p, 1 - p) >= self.threshold

    def relaxed(self, keep: float) -> ExitRule:
        return replace(self, threshold=0.5 + (self.threshold - 0.5) * min(max(keep, 0.0), 1.0))


@dataclass(frozen=True)
class EntropyRule(ExitRule):
    threshold: float = 0.3  # nats; ln 2 = 0.693 is a coin flip
    name: ClassVar[str] = "entropy"

    def decide(self, probs: np.ndarray) -> np.ndarray:
        p = np.clip(probs[:, -1], EPS, 1 - EPS)
        entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
        return entropy <= self.threshold

    def relaxed(self, keep: float) -> ExitRule:
        return replace(self, threshold=np.log(2) - (np.log(2) - self.threshold) * min(max(keep, 0.0), 1.0))


@dataclass(frozen=True)
class PatienceRule(ExitRule):
    patience: int = 2
    name: ClassVar[str] = "patience"

    def decide(self, probs: np.ndarray) -> np.ndarray:
        if probs.shape[1] < self.patience:
            return np.zeros(len(probs), dtype=bool)
        last = probs[:, -self.patience:] >= 0.5
        return last.all(axis=1) | (~last).all(axis=1)


@dataclass(frozen=True)
class FixedHeadRule(ExitRule):
    """Every sample exits at head ``head`` (0-based): a forced depth, for benchmarks and load shedding."""

    head: int = 0
    name: ClassVar[str] = "fixed_head"

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return np.full(len(probs), probs.shape[1] == self.head + 1)


RULES: dict[str, type[ExitRule]] = {r.name: r for r in (ExitRule, RatioTrendRule, MaxProbRule, EntropyRule,
                                                        PatienceRule, FixedHeadRule)}


def rule_from_dict(spec: dict) -> ExitRule:
    """Inverse of :meth:`ExitRule.to_dict` (checkpoints store the calibrated rule this way)."""
    spec = dict(spec)
    name = spec.pop("rule")
    if name not in RULES:
        raise ValueError(f"unknown exit rule {name!r}; choose one of {sorted(RULES)}")
    return RULES[name](**spec)


def exit_points(probs: np.ndarray, rule: ExitRule) -> np.ndarray:
    """Offline replay of a rule over all heads' probabilities ``(n, H)``: the 0-based head index at which each
    sample exits (the last head when the rule never fires). Used by calibration and the benchmark."""
    n, heads = probs.shape
    exit_at = np.full(n, heads - 1)
    active = np.ones(n, dtype=bool)
    for h in range(1, heads):
        fire = active & rule.decide(probs[:, :h])
        exit_at[fire] = h - 1
        active &= ~fire
    return exit_at
