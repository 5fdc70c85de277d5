#!/usr/bin/env python3
"""Convert a Hugging Face BitNet b1.58 model directory to GGUF (stand-alone front over
bitnet_tools.convert, in the style of llama.cpp's convert_hf_to_gguf.py).

    python convert/convert_hf_to_gguf_bitnet.py MODEL_DIR --outtype i2_s --outfile model-i2_s.gguf

Families: 1bitLLM bitnet_b1_58-* (BitnetForCausalLM -> bitnet), microsoft BitNet-b1.58-2B-4T and
-bf16 (BitNetForCausalLM -> bitnet-b1.58), Llama3-8B-1.58 / Falcon3-*-1.58bit / Falcon-E
(LlamaForCausalLM -> llama).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bitnet_tools.convert import ConvertError, convert  # noqa: E402
from bitnet_tools.writer import EMBEDDING_TYPES, TERNARY_TYPES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="directory with config.json, *.safetensors and tokenizer files")
    ap.add_argument("--outfile", type=Path, help="output path (default: MODEL/ggml-model-OUTTYPE.gguf)")
    ap.add_argument("--outtype", default="i2_s", choices=list(TERNARY_TYPES), help="type of the ternary matrices")
    ap.add_argument("--embd-type", default=None, choices=list(EMBEDDING_TYPES),
                    help="type of token embedding / output head (default: q6_k if vocab >= 64k else f16)")
    ap.add_argument("--force", action="store_true",
                    help="convert even if weights are not ternary (ternarize them) or lm_head must be dropped")
    ap.add_argument("--verbose", action="store_true", help="print every tensor written")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    outfile = args.outfile or args.model / f"ggml-model-{args.outtype}.gguf"
    progress = (lambda name: print(name, file=sys.stderr)) if args.verbose else None
    try:
        path = convert(args.model, outfile, args.outtype, args.embd_type, args.force, progress)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
