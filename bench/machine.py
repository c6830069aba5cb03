"""The machine a benchmark ran on, saved with every result."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

MATRIX_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> dict:
    """CPU model, cores, memory, versions, GPU, and ``matrix_isa``: which of :data:`MATRIX_ISA` the CPU reports
    (int8 and bf16 speed depend on them: the same "AMD EPYC" name has come with and without AVX-512 here)."""
    info = Path("/proc/cpuinfo").read_text().splitlines()
    flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
               platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    return {"cpu": cpu, "matrix_isa": [f for f in MATRIX_ISA if f in flags], "cores": os.cpu_count(),
            "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "os": platform.platform()}
