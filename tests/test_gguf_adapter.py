"""bitnet_tools.gguf_adapter is the only code that touches gguf-py's internals: its check must
pass on the installed gguf, and must fail when one of those internals is gone."""
from __future__ import annotations

import numpy as np
import pytest
from gguf.gguf_reader import GGUFReader

from bitnet_tools import gguf_adapter, quants
from bitnet_tools.writer import PendingTensor, write_gguf


def test_installed_gguf_has_what_the_adapter_uses():
    gguf_adapter.check()


def test_check_fails_when_an_internal_is_gone(monkeypatch):
    monkeypatch.delattr(GGUFReader, "_build_tensors")
    with pytest.raises(AssertionError, match="_build_tensors"):
        gguf_adapter.check()


@pytest.mark.parametrize("name", list(quants.OURS))
def test_streamed_file_reads_back_with_real_sizes(tmp_path, name):
    """A file streamed through the adapter's hooks reads back through GGUFReader: our type ids,
    and every tensor's bytes as written, tail included (TL tiles span rows; I2_S rows of 200 are
    padded to 256)."""
    t = quants.OURS[name]
    q = np.random.default_rng(0).integers(-1, 2, size=(40, 200)).astype(np.float32) * np.float32(0.5)
    data = t.quant.quantize(q)
    path = write_gguf(tmp_path / "x.gguf", "bitnet-b1.58", lambda w: None,
                      [PendingTensor("w", q.shape, t.qtype, lambda: data)])
    r = GGUFReader(path)
    (tensor,) = r.tensors
    assert tensor.tensor_type == t.qtype
    assert tensor.n_bytes == t.nbytes(q.shape) == data.size
    assert np.array_equal(np.asarray(tensor.data).reshape(-1).view(np.uint8), data)
