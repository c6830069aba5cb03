r"""Content match of a candidate with the user's history, from sentence embeddings of item texts (pure math plus
an embedding cache; no Kafka, no store).

The language model's own reading of the catalogue: each distinct item text is embedded once by a sentence
encoder (MiniLM mean pooling, L2-normalised, as shipped in the wheel) and kept (:class:`TextEmbeddings`, bounded
LRU); a request then costs dictionary lookups, not a transformer pass. With :math:`c` the candidate's embedding
and :math:`\bar l`, :math:`\bar d` the means over the prompt's liked and disliked history items:

==========================  =================================================================================
``liked_match``             :math:`c\cdot\bar l` (0 without liked history)
``disliked_match``          :math:`c\cdot\bar d` (0 without disliked history)
``match_margin``            :math:`c\cdot\bar l - c\cdot\bar d` when both exist, else 0
``has_liked_history``       1 when the prompt lists a liked item
``has_disliked_history``    1 when the prompt lists a disliked item
==========================  =================================================================================

This is the signal rates cannot carry: whether *this* candidate resembles what *this* user liked. Measured on
MovieLens-100K (bench/results/accuracy_ml-100k.json) the frozen backbone's pooled prompt state added nothing over
the numeric evidence, while these five numbers did.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from scorer import backbones
from scorer.prompt import PromptInputs

CONTENT_FEATURES = ("liked_match", "disliked_match", "match_margin", "has_liked_history", "has_disliked_history")


class SentenceEncoder:
    """MiniLM sentence embeddings: mean of the last hidden states over real tokens, L2-normalised."""

    def __init__(self, folder: Path, max_length: int = 128, device: torch.device | None = None) -> None:
        self.device = device or backbones.best_device()
        self.model = AutoModel.from_pretrained(str(folder)).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.max_length = max_length
        self.identity = self.identity_of(folder, max_length)

    @staticmethod
    def identity_of(folder: Path, max_length: int = 128) -> str:
        """What a saved embedding is only valid for: the weights' config and the token limit."""
        config = (Path(folder) / "config.json").read_bytes()
        return f"{hashlib.sha256(config).hexdigest()[:12]}-{max_length}"

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()


class TextEmbeddings:
    """Embeddings of item texts, computed in batches on first sight and kept (least recently used beyond
    ``max_texts`` are dropped)."""

    def __init__(self, encoder: SentenceEncoder, max_texts: int = 500_000, batch_size: int = 256) -> None:
        self.encoder, self.max_texts, self.batch_size = encoder, max_texts, batch_size
        self.vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def ensure(self, texts: Iterable[str]) -> None:
        """Embed the texts not yet cached."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            self.vectors.update(zip(chunk, self.encoder.encode(chunk), strict=True))
        while len(self.vectors) > self.max_texts:
            self.vectors.popitem(last=False)

    def save(self, path: Path) -> Path:
        """Every kept text and its vector in one ``.npz`` file, with the encoder's identity."""
        path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self.vectors)
        vectors = np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, self.encoder.dim), np.float32)
        with path.open("wb") as out:  # np.savez would append .npz to a name without it
            np.savez(out, texts=np.array(texts, dtype=object), vectors=vectors,
                     identity=np.array(self.encoder.identity))
        return path

    def load(self, path: Path) -> int:
        """Add the texts of a file :meth:`save` wrote (the count); a file of another encoder is refused."""
        with np.load(path, allow_pickle=True) as saved:
            if str(saved["identity"]) != self.encoder.identity:
                raise ValueError(f"{path} holds embeddings of encoder {saved['identity']}, not {self.encoder.identity}"
                                 f": rebuild it (exitrec embed-catalogue)")
            self.vectors.update(zip(saved["texts"].tolist(), saved["vectors"], strict=True))
            return len(saved["texts"])

    def __getitem__(self, text: str) -> np.ndarray:
        vector = self.vectors.get(text)
        if vector is None:
            self.ensure([text])
            vector = self.vectors[text]
        self.vectors.move_to_end(text)
        return vector


def texts_of(inputs: Iterable[PromptInputs]) -> list[str]:
    """Every item text a batch of prompt inputs refers to (candidates and history)."""
    return [t for x in inputs for t in (x.target, *(text for text, _ in x.history))]


def content_match(inputs: PromptInputs, embeddings: TextEmbeddings) -> list[float]:
    """The five :data:`CONTENT_FEATURES` of one pair."""
    c = embeddings[inputs.target]
    liked = [embeddings[t] for t, label in inputs.history if label == 1]
    disliked = [embeddings[t] for t, label in inputs.history if label != 1]
    lm = float(c @ np.mean(liked, axis=0)) if liked else 0.0
    dm = float(c @ np.mean(disliked, axis=0)) if disliked else 0.0
    return [lm, dm, lm - dm if liked and disliked else 0.0, float(bool(liked)), float(bool(disliked))]


def catalogue_embeddings_path(cache_dir: Path, catalogue: str, identity: str) -> Path:
    """Where ``exitrec embed-catalogue`` keeps a catalogue's item-text embeddings for the encoder of ``identity``
    (:meth:`SentenceEncoder.identity_of`)."""
    return Path(cache_dir) / "embeddings" / f"{catalogue}-{identity}.npz"
