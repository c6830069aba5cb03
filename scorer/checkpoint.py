"""Early-exit checkpoints: one folder is the unit of a model, like a Hugging Face model directory.

Layout: ``config.json`` (base model reference, kind, head layers, pooling, max prompt tokens, whether the
backbone was fine-tuned, the numeric features the heads read and the prior they are smoothed with, the chosen
exit rule, the validation curve, metrics), ``heads.safetensors`` (heads and feature scale),
``calibration.json`` (per-head probability maps, :mod:`scorer.calibration`), ``tokenizer/``,
``graph_token.safetensors`` only for a model with a graph token (``graph_dim`` > 0), ``smoothing.safetensors``
only for an int8 backbone with activation smoothing (``int8_smoothing`` > 0, :mod:`scorer.smoothing`), and ``backbone/``
(``save_pretrained``) only when the backbone was fine-tuned — a frozen backbone is re-resolved from its
reference. Loading rebuilds the same modules, so outputs are identical; a folder lacking one of its files fails
with a message naming it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import torch
from safetensors.torch import load_file, save_file
from torch.ao.quantization import per_channel_dynamic_qconfig
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from scorer import backbones, calibration
from scorer.exit_rules import ExitRule, rule_from_dict
from scorer.model import EarlyExitModel
from scorer.smoothing import ALPHA, CALIBRATION_ROWS, activation_maxima, scales_of, smooth_linears, smoothing_scales

log = structlog.get_logger("scorer")


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
    features: list[str] = field(default_factory=list)  # scorer.features.FEATURES, or [] (text-only heads)
    prior: float = 0.5  # the positive rate the features' rates are smoothed towards
    precision: str = "fp32"  # backbone weights and activations at inference: fp32, bf16 or int8 (PRECISIONS)
    # int8: the backbone's Linear layers (name suffixes) kept in fp32: [] since the activations are smoothed (every
    # Linear int8), each block's attention output projection in cards of 2026-12-05/06, [] before that too
    fp32_linears: list[str] = field(default_factory=list)
    int8_smoothing: float = 0.0  # int8: the smoothing strength alpha (scorer.smoothing; 0 = none, older cards)
    graph_dim: int = 0  # LightGCN dimension a graph token reads (0: none; scorer.model.GraphToken)
    # a new user's rows answer at the layer-0 head (features alone), chosen on validation (scorer.train.
    # new_users_at_layer0); False: they follow the exit rule like every row (and in cards from before the field)
    new_users_at_layer0: bool = False
    digest: str = ""  # of the trained files, set by :func:`load` (not stored): tells two trainings apart

    @property
    def smoothed(self) -> bool:
        """Whether the backbone is int8 with activation smoothing (so the folder holds :data:`SMOOTHING`)."""
        return self.precision == "int8" and self.int8_smoothing > 0

    @property
    def trained_files(self) -> tuple[str, ...]:
        """The files of this model's trained parameters in its folder beside ``config.json``."""
        return (HEADS, calibration.FILE) + ((GRAPH_TOKEN,) if self.graph_dim else ()) + \
            ((SMOOTHING,) if self.smoothed else ())

    @property
    def version(self) -> str:
        features = f"+f{len(self.features)}" if self.features else ""
        precision = "" if self.precision == "fp32" else f"+{self.precision}"
        graph = f"+g{self.graph_dim}" if self.graph_dim else ""
        digest = f"#{self.digest}" if self.digest else ""
        return (f"{Path(self.base_model).name}@{'-'.join(map(str, self.head_layers))}{features}{graph}{precision}"
                f"{digest}")


CASTS = {"fp32": torch.float32, "bf16": torch.bfloat16}  # precisions that are a weight dtype
PRECISIONS = (*CASTS, "int8")


def smoothing_for(precision: str) -> float:
    """What a checkpoint trained at ``precision`` records in :attr:`ModelCard.int8_smoothing`: every new int8
    backbone is smoothed (:data:`scorer.smoothing.ALPHA`), with no Linear layer left in fp32."""
    return ALPHA if precision == "int8" else 0.0


def int8_engine() -> str | None:
    """The quantized-kernel engine PyTorch has on this CPU (``x86`` / ``fbgemm`` need AVX2; ``onednn``), or None."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm", "onednn") if e in engines), None)


def with_precision(model: EarlyExitModel, precision: str, fp32_linears: Sequence[str] = (),
                   smoothing: dict[str, torch.Tensor] | None = None) -> EarlyExitModel:
    """Run the backbone at ``precision`` (:data:`PRECISIONS`); the heads stay fp32 and read the pooled states in
    fp32. ``bf16`` casts the weights (AVX512-BF16 / AMX matrix math); ``int8`` first wraps the Linear layers named
    in ``smoothing`` in their activation smoothing (:mod:`scorer.smoothing`, scales from :func:`int8_scales`), then
    replaces every Linear layer of the backbone but those whose names end with one of ``fp32_linears`` by
    PyTorch's dynamic int8 one: weights quantized once per output channel,
    :math:`W \\approx s_w \\odot W_q`, activations quantized per batch, :math:`x \\approx s_x (x_q - z_x)`, and
    the product accumulated in int32 (fbgemm / oneDNN kernels; CPU only). The heads, their calibration and the
    exit rule must be fitted on states of the same precision, which is why the precision belongs to the
    checkpoint. Where int8 cannot run (a GPU, or a CPU without a quantized engine) the backbone stays fp32 with
    one warning naming why. int8 gives up one property: the activation scale is taken over the whole batch, so a
    row's score moves with its batch mates (smoothed: mean 0.004, max 0.016 in probability at the deepest head
    over 64 Book-Crossing prompts in batches of 32; unsmoothed twice that), where fp32 and bf16 score a row as
    alone up to float rounding; that is why ``auto`` never picks it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision in CASTS:
        model.backbone.to(CASTS[precision])
        return model
    device = next(model.backbone.parameters()).device
    engine = int8_engine()
    if device.type != "cpu" or engine is None:
        why = f"the backbone is on {device}" if device.type != "cpu" else "this CPU has no quantized engine"
        log.warning("int8_fallback", precision="fp32", why=f"{why}: int8 runs on the CPU's fbgemm/oneDNN kernels")
        return model
    torch.backends.quantized.engine = engine
    if smoothing:
        smooth_linears(model.backbone, smoothing)
    int8_linears(model.backbone, fp32_linears)
    return model


@torch.no_grad()
def int8_scales(model: EarlyExitModel, ids: torch.Tensor, mask: torch.Tensor, rows: int = CALIBRATION_ROWS,
                alpha: float = ALPHA, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Activation-smoothing scales of ``model``'s (fp32) backbone from ``rows`` of the prompts ``ids`` / ``mask``
    spread evenly over them (training prompts in time order: the calibration spans the training period)."""
    chosen = torch.linspace(0, len(ids) - 1, min(rows, len(ids))).long()
    ids, mask = ids[chosen], mask[chosen]
    device = next(model.backbone.parameters()).device

    def run():
        for start in range(0, len(ids), batch_size):
            model.pooled_per_head(ids[start:start + batch_size].to(device), mask[start:start + batch_size].to(device))
            yield None

    return smoothing_scales(model.backbone, activation_maxima(model.backbone, run()), alpha)


def int8_linears(module: torch.nn.Module, fp32_linears: Sequence[str] = ()) -> torch.nn.Module:
    """Replace ``module``'s Linear layers, in place, by dynamic int8 ones (per-channel weight scales), except those
    whose names end with one of ``fp32_linears``."""
    keep = tuple(fp32_linears)
    chosen = {name: per_channel_dynamic_qconfig for name, m in module.named_modules()
              if isinstance(m, torch.nn.Linear) and not name.endswith(keep)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's notice that torchao will take over
        return torch.ao.quantization.quantize_dynamic(module, chosen, dtype=torch.qint8, inplace=True)


WALL_CLOCK_METRICS = ("train_seconds",)  # facts of the run, not of the model: outside the digest


def content_digest(folder: Path) -> str:
    """First 8 hex digits of SHA-256 over ``config.json`` (without :data:`WALL_CLOCK_METRICS`) and the trained files
    (:attr:`ModelCard.trained_files`): two trainings on the same data and seed give the same digest, however long
    each took."""
    config = json.loads((Path(folder) / "config.json").read_text())
    for key in WALL_CLOCK_METRICS:
        config.get("metrics", {}).pop(key, None)
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in card_of(config).trained_files:
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()[:8]


def card_of(config: dict) -> ModelCard:
    """The card a ``config.json`` holds (without what :func:`save` adds beside it)."""
    return ModelCard(**{k: v for k, v in config.items() if k not in ("kind", "digest")})


HEADS = "heads.safetensors"
GRAPH_TOKEN = "graph_token.safetensors"  # the graph token's projection, when the model has one
SMOOTHING = "smoothing.safetensors"  # an int8 backbone's activation-smoothing scales, when the card has them


def readout_state(model: EarlyExitModel) -> dict[str, torch.Tensor]:
    """Heads and feature scale (neither the backbone nor the graph token)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("backbone.", "graph_token."))}


def save(folder: Path, model: EarlyExitModel, tokenizer: PreTrainedTokenizerBase, card: ModelCard) -> Path:
    """Write the checkpoint; the model must carry its calibration (fitted on validation rows)."""
    if model.calibration is None:
        raise ValueError("the model has no calibration: fit one (HeadCalibration.fit) before saving")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in readout_state(model).items()}, str(folder / HEADS))
    if model.graph_token is not None:
        save_file({k: v.contiguous() for k, v in model.graph_token.state_dict().items()}, str(folder / GRAPH_TOKEN))
    model.calibration.save(folder)
    if card.smoothed:
        scales = scales_of(model.backbone)
        if not scales:
            raise ValueError("the card names int8 activation smoothing but the backbone has none: build it with "
                             "with_precision(..., smoothing=int8_scales(...))")
        save_file({k: v.contiguous() for k, v in scales.items()}, str(folder / SMOOTHING))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    if card.fine_tuned:
        model.backbone.save_pretrained(str(folder / "backbone"))
    stored = {k: v for k, v in card.__dict__.items() if k != "digest"}
    (folder / "config.json").write_text(json.dumps({**stored, "kind": model.kind}, indent=2, default=str))
    return folder


def load(folder: Path, cache_dir: Path, device: torch.device | str = "cpu"
         ) -> tuple[EarlyExitModel, PreTrainedTokenizerBase, ModelCard, ExitRule]:
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not an early-exit checkpoint (no config.json)")
    card = card_of(json.loads((folder / "config.json").read_text()))
    for needed in (*card.trained_files, "tokenizer") + (("backbone",) if card.fine_tuned else ()):
        if not (folder / needed).exists():
            raise FileNotFoundError(f"{folder / needed} is missing: the checkpoint is incomplete; re-run "
                                    "exitrec train-model")
    source = folder / "backbone" if card.fine_tuned else backbones.resolve(card.base_model, cache_dir)
    backbone = AutoModel.from_pretrained(str(source), dtype=torch.float32)
    model = EarlyExitModel(backbone, card.head_layers, card.pooling, len(card.features), card.graph_dim)
    missing, unexpected = model.load_state_dict(load_file(str(folder / HEADS)), strict=False)
    missing = [k for k in missing if not k.startswith(("backbone.", "graph_token."))]
    if missing or unexpected:
        raise ValueError(f"{folder / HEADS} does not fit config.json: missing {missing}, unexpected {unexpected}")
    if model.graph_token is not None:
        model.graph_token.load_state_dict(load_file(str(folder / GRAPH_TOKEN)))
    model.calibration = calibration.HeadCalibration.load(folder)
    if len(model.calibration.platt) != len(card.head_layers):
        raise ValueError(f"{folder / calibration.FILE} has {len(model.calibration.platt)} head maps; the model "
                         f"has {len(card.head_layers)} heads")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    tokenizer.padding_side = "right"
    card.digest = content_digest(folder)
    smoothing = load_file(str(folder / SMOOTHING)) if card.smoothed else None
    return with_precision(model.to(device), card.precision, card.fp32_linears, smoothing).eval(), tokenizer, card, \
        rule_from_dict(card.rule)
