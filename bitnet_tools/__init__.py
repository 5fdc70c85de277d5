"""bitnet-tools: ternary (BitNet b1.58) language models on CPUs, through a patched llama.cpp."""
from __future__ import annotations

__version__ = "0.1.0"

from . import quants  # noqa: F401  registers our GGML types with gguf-py
from .runtime import load  # noqa: F401
