"""Perplexity the way llama.cpp's llama-perplexity computes it: the text is cut into chunks of
n_ctx tokens, each starts with BOS, and only the second half of each chunk is scored (so every
scored token has at least n_ctx/2 tokens of context). Done here through llama_cpp rather than by
running llama-perplexity, whose final lines can be lost when its log thread is not flushed at exit."""
from __future__ import annotations

import math

import numpy as np


def perplexity(llm, text: str, n_ctx: int, max_chunks: int = -1, progress=None) -> tuple[float, float]:
    """(perplexity, its standard error) of `llm` (made with logits_all=True) on `text`."""
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True)  # as llama-perplexity: BOS first
    n_chunks = len(tokens) // n_ctx
    if max_chunks > 0:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one context of {n_ctx}: "
                         "give a longer text or a smaller -c")
    nll = []
    first = n_ctx // 2
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
        chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[first:n_ctx - 1], dtype=np.float64)
        targets = np.asarray(chunk[first + 1:n_ctx])
        top = logits.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        nll.extend(logsum - logits[np.arange(len(targets)), targets])
        if progress:
            progress(c + 1, n_chunks)
    nll = np.asarray(nll)
    mean = float(nll.mean())
    # standard error of exp(mean nll) by the delta method
    err = math.exp(mean) * float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    return math.exp(mean), err
