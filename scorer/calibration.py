r"""Per-head probability calibration (Platt scaling), fitted on validation rows, stored with the checkpoint.

Each exit head ``j`` gets its own map from the head's raw click probability :math:`q` to a calibrated one:
:math:`p = \sigma\bigl(a_j\,\mathrm{logit}(q) + b_j\bigr)`, with :math:`a_j, b_j` fitted by logistic regression
(scikit-learn) of the validation labels on :math:`\mathrm{logit}(q)`. The map is monotone, so a head's AUC is
unchanged while its ``ctr`` becomes a frequency (a served 0.3 means 30% clicks). Platt rather than isotonic: two
numbers per head do not overfit a few thousand validation rows and keep distinct scores distinct (isotonic's
steps tie them, which costs AUC). The exit rule reads calibrated probabilities, so thresholds mean the same
thing at every head. Stored as ``calibration.json`` (``{"platt": [[a_0, b_0], ...]}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

EPS = 1e-7
FILE = "calibration.json"


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class HeadCalibration:
    platt: tuple[tuple[float, float], ...]  # (a_j, b_j) per head

    @classmethod
    def identity(cls, n_heads: int) -> HeadCalibration:
        return cls(tuple((1.0, 0.0) for _ in range(n_heads)))

    @classmethod
    def fit(cls, probs: np.ndarray, labels: np.ndarray) -> HeadCalibration:
        """One Platt map per column of ``probs`` ``(n, heads)`` (raw head probabilities of validation rows)."""
        maps = []
        for j in range(probs.shape[1]):
            lr = LogisticRegression(C=1e4).fit(logit(probs[:, j]).reshape(-1, 1), labels)
            maps.append((float(lr.coef_[0, 0]), float(lr.intercept_[0])))
        return cls(tuple(maps))

    def apply(self, head: int, p: np.ndarray) -> np.ndarray:
        a, b = self.platt[head]
        return 1.0 / (1.0 + np.exp(-(a * logit(p) + b)))

    def apply_all(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated copy of ``probs`` ``(n, heads)`` (NaN stays NaN)."""
        return np.stack([self.apply(j, probs[:, j]) for j in range(probs.shape[1])], axis=1)

    def save(self, folder: Path) -> None:
        (Path(folder) / FILE).write_text(json.dumps({"platt": [list(m) for m in self.platt]}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> HeadCalibration:
        path = Path(folder) / FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the checkpoint has no calibrator; re-run exitrec "
                                    "train-model (it fits one per head on validation rows)")
        return cls(tuple((float(a), float(b)) for a, b in json.loads(path.read_text())["platt"]))
