"""Early-exit checkpoints: one folder is the unit of a model, like a Hugging Face model directory.

Layout: ``config.json`` (base model reference, kind, head layers, pooling, max prompt tokens, whether the
backbone was fine-tuned, the calibrated exit rule, the validation curve, metrics), ``heads.safetensors``,
``tokenizer/``, and ``backbone/`` (``save_pretrained``) only when the backbone was fine-tuned — a frozen backbone
is re-resolved from its reference. Loading rebuilds the same modules, so outputs are identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from scorer import backbones
from scorer.exit_rules import ExitRule, rule_from_dict
from scorer.model import EarlyExitModel


@dataclass
class ModelCard:
    base_model: str
    head_layers: list[int]
    pooling: str
    max_length: int
    fine_tuned: bool
    rule: dict = field(default_factory=lambda: {"rule": "never"})
    calibration: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return f"{Path(self.base_model).name}@{'-'.join(map(str, self.head_layers))}"


def save(folder: Path, model: EarlyExitModel, tokenizer: PreTrainedTokenizerBase, card: ModelCard) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.heads.state_dict().items()}, str(folder / "heads.safetensors"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    if card.fine_tuned:
        model.backbone.save_pretrained(str(folder / "backbone"))
    (folder / "config.json").write_text(json.dumps({**card.__dict__, "kind": model.kind}, indent=2, default=str))
    return folder


def load(folder: Path, cache_dir: Path, device: torch.device | str = "cpu"
         ) -> tuple[EarlyExitModel, PreTrainedTokenizerBase, ModelCard, ExitRule]:
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not an early-exit checkpoint (no config.json)")
    raw = json.loads((folder / "config.json").read_text())
    raw.pop("kind", None)
    card = ModelCard(**raw)
    source = folder / "backbone" if card.fine_tuned else backbones.resolve(card.base_model, cache_dir)
    backbone = AutoModel.from_pretrained(str(source), dtype=torch.float32)
    model = EarlyExitModel(backbone, card.head_layers, card.pooling)
    model.heads.load_state_dict(load_file(str(folder / "heads.safetensors")))
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    tokenizer.padding_side = "right"
    return model.to(device).eval(), tokenizer, card, rule_from_dict(card.rule)
