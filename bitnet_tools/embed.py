"""Text embeddings from embedding models (bitnet-embedding-0.6b / -270m and their conversions).

    llm = bitnet_tools.load("model.gguf", embedding=True)
    vectors = embed(llm, ["query: what is BitNet?", "a document"])   # [n, width], unit length

The model pools (its GGUF's `<arch>.pooling_type`: the last token for the BitNet embedding
models, whose tokenizer appends an end-of-text token for it) and the vectors are L2-normalised,
as the models were trained. Many texts go through the engine in one batch; a text longer than
the batch is refused, never cut (cutting would drop the very token the model pools).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np


class EmbedError(ValueError):
    """Texts or a model that cannot be embedded; the message names the cause and the fix."""


def pooling_type(path: Path) -> int | None:
    """The GGUF's `<arch>.pooling_type` (gguf.PoolingType), None when it has none (a text model)
    or when the engine cannot read the file (its load refuses it again, in its own words). Read
    by the engine without weights (vocab_only): its C reader takes a fraction of a second where
    gguf-py takes seconds over a 128K-token vocabulary."""
    import ctypes
    import llama_cpp
    from .runtime import engine_errors
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with engine_errors(echo=False):
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return None
    try:
        value = ctypes.create_string_buffer(256)
        if llama_cpp.llama_model_meta_val_str(model, b"general.architecture", value, len(value)) < 0:
            return None
        if llama_cpp.llama_model_meta_val_str(model, value.value + b".pooling_type", value, len(value)) < 0:
            return None
        return int(value.value)
    finally:
        llama_cpp.llama_model_free(model)


def read_texts(prompts: list[str], file: Path | None) -> list[str]:
    """-p texts, then the non-empty lines of -f FILE ("-": standard input)."""
    texts = list(prompts)
    if file is not None:
        import sys
        try:
            body = sys.stdin.read() if str(file) == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EmbedError(f"cannot read {file}: {e.__class__.__name__}: {e} (give a UTF-8 text file, one text per "
                             "line)") from None
        texts += [line for line in body.splitlines() if line.strip()]
    if not texts:
        raise EmbedError("no text to embed: give -p TEXT (repeatable) or -f FILE (one text per line)")
    return texts


def embed(llm, texts: list[str]) -> np.ndarray:
    """Unit-length embeddings [len(texts), width] (float32) from a model loaded with embedding=True."""
    import llama_cpp
    if llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_NONE:
        raise EmbedError(f"{Path(llm.model_path).name} is a text model (its GGUF sets no pooling): embed with an "
                         "embedding model (bitnet setup --hf-repo microsoft/bitnet-embedding-0.6b)")
    for i, text in enumerate(texts):
        n = len(llm.tokenize(text.encode("utf-8")))
        if n > llm.n_batch:
            raise EmbedError(f"text {i + 1} has {n} tokens, more than the {llm.n_batch} one batch holds: split it, "
                             "or raise the context (-c)")
    vectors = np.asarray(llm.embed(texts, normalize=False, truncate=False), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def check_out(path: Path) -> Path:
    """An --out path that write_vectors can fill (checked before the model loads, too)."""
    path = Path(path)
    if path.suffix not in (".npy", ".json"):
        raise EmbedError(f"--out {path}: name a .npy or .json file")
    if not path.parent.is_dir():
        raise EmbedError(f"--out {path}: directory {path.parent} does not exist, create it first")
    return path


def write_vectors(path: Path, texts: list[str], vectors: np.ndarray) -> Path:
    """.npy (the matrix) or .json ([{"text", "embedding"}]); written whole or not at all."""
    path = check_out(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".npy":
                np.save(f, vectors)
            else:
                rows = [{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors)]
                f.write(json.dumps(rows, ensure_ascii=False).encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
