"""Every row width of every standard shape, in every ternary type: `bitnet dummy` writes it,
`bitnet info` reads it, llama.cpp loads it and computes a token. One layer and a small vocabulary
per file, so that even the 70B widths stay quick; the widths are what the kernels see."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from bitnet_tools import dummy

TYPES = ["i2_s", "tl1", "tl2", "tq1_0", "tq2_0"]
BLOCK = {"tq1_0": 256, "tq2_0": 256}   # llama.cpp's TQ types need whole blocks; ours take any width


def _distinct_shapes() -> list[str]:
    seen, names = set(), []
    for name, s in dummy.SHAPES.items():
        key = (s.n_embd, s.n_ff, s.n_head, s.n_head_kv, s.hd, s.arch)
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def test_the_shapes_cover_the_awkward_widths():
    widths = {w for s in dummy.SHAPES.values() for w in (s.n_embd, s.n_ff)}
    assert 8640 in widths and 3200 in widths        # 3B: FFN 67.5 groups of 128, hidden 12.5 blocks of 256
    assert 14336 in widths and 23040 in widths      # Llama3-8B, Falcon3-7B


@pytest.mark.slow
@pytest.mark.parametrize("shape", _distinct_shapes())
def test_every_width_in_every_ternary_type_loads_and_runs(tmp_path, shape):
    import gguf
    from bitnet_tools import load
    from bitnet_tools.cli import app

    s = dummy.SHAPES[shape]
    notes = []
    for qtype in TYPES:
        path = tmp_path / f"{shape}-{qtype}.gguf"
        dummy.write(path, shape, qtype, n_layer=1, n_vocab=512, note=notes.append)
        # each BitLinear is the type asked for where that type holds its rows, else I2_S; no f16;
        # the file type names what holds the weights
        reader = gguf.GGUFReader(path)
        # the type holding most of the matrix weights (count them per type)
        per_type: dict[str, int] = {}
        for name, rows, cols in dummy.layer_matrices(s):
            t = qtype if cols % BLOCK.get(qtype, 1) == 0 else "i2_s"
            per_type[t] = per_type.get(t, 0) + rows * cols
        held = max(per_type, key=per_type.get)
        assert int(reader.get_field("general.file_type").contents()) == gguf.LlamaFileType[f"MOSTLY_{held.upper()}"]
        for t in reader.tensors:
            if t.name.startswith("blk.0.") and t.name.split(".")[2] in ("attn_q", "attn_k", "attn_v", "attn_output",
                                                                       "ffn_gate", "ffn_up", "ffn_down"):
                width = int(t.shape[0])   # ggml order: ne0 is the row width
                want = qtype if width % BLOCK.get(qtype, 1) == 0 else "i2_s"
                assert t.tensor_type.name.lower() == want, (shape, qtype, t.name, width)
            # no f16 weights; an embedding model's token embedding is f16, as converted
            if not (s.embedding and t.name == "token_embd.weight"):
                assert t.tensor_type.name not in ("F16", "BF16"), (shape, qtype, t.name)
        r = CliRunner().invoke(app, ["info", str(path)])
        assert r.exit_code == 0 and "total" in r.output, r.output
        llm = load(path, n_ctx=16, n_threads=2, logits_all=True)
        llm.eval([1, 300])
        logits = np.asarray(llm.scores[1])
        assert logits.shape == (512,) and np.isfinite(logits).all() and np.abs(logits).max() > 0, (shape, qtype)
        del llm
        path.unlink()
    # the substitutions were said, once per width a TQ type cannot hold
    for qtype in ("tq1_0", "tq2_0"):
        for w in sorted({s.n_embd, s.n_ff}):
            said = any(f"{qtype} cannot hold rows of {w} values" in n for n in notes)
            assert said == (w % 256 != 0), (qtype, w, notes)
