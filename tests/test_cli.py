"""The bitnet CLI, through Typer's CliRunner and as real subprocesses."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitnet_tools import dummy
from bitnet_tools.cli import app

runner = CliRunner()
BITNET = [sys.executable, "-m", "bitnet_tools.cli"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return dummy.write(tmp_path_factory.mktemp("m") / "tiny-i2_s.gguf", "tiny", "i2_s", embd_type_name="f16")


def test_dummy_and_info(tmp_path):
    out = tmp_path / "d.gguf"
    r = runner.invoke(app, ["dummy", "--shape", "tiny", "-q", "tq2_0", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and not list(tmp_path.glob(".*partial"))
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0, r.output
    assert "TQ2_0" in r.output and "bitnet-b1.58" in r.output
    # 14 ternary tensors of the tiny shape, each 256x? -> the table counts them
    n_ternary = 7 * dummy.SHAPES["tiny"].n_layer
    assert any(line.split("│")[1].strip() == "TQ2_0" and line.split("│")[2].strip() == str(n_ternary)
               for line in r.output.splitlines() if line.count("│") > 3)


def test_bad_inputs_are_one_line_errors(tmp_path):
    r = runner.invoke(app, ["dummy", "--shape", "nope", "-o", str(tmp_path / "x.gguf")])
    assert r.exit_code != 0 and "unknown shape" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["info", str(tmp_path / "missing.gguf")])
    assert r.exit_code != 0 and "does not exist" in r.output
    notgguf = tmp_path / "x.gguf"
    notgguf.write_text("hello")
    r = runner.invoke(app, ["infer", "-m", str(notgguf), "-p", "hi"])
    assert r.exit_code != 0 and "not a GGUF file" in r.output
    r = runner.invoke(app, ["bench", "-t", "0", "--shape", "tiny"])
    assert r.exit_code != 0 and "--threads" in r.output


def test_infer_streams_greedy_text_as_subprocess(tiny):
    r = subprocess.run(BITNET + ["infer", "-m", str(tiny), "-p", "the quick", "-n", "12", "--temp", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    again = subprocess.run(BITNET + ["infer", "-m", str(tiny), "-p", "the quick", "-n", "12", "--temp", "0"],
                           capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() and r.stdout == again.stdout  # greedy is deterministic


def test_chat_with_piped_input(tiny):
    r = subprocess.run(BITNET + ["chat", "-m", str(tiny), "-n", "8", "--temp", "0"],
                       input="hello there\nand again\n\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len([ln for ln in r.stdout.splitlines() if ln.strip()]) >= 1


def test_ppl(tiny, tmp_path, tools):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 200))
    r = runner.invoke(app, ["ppl", "-m", str(tiny), "-f", str(text), "-c", "128", "--chunks", "2"])
    assert r.exit_code == 0, r.output
    value = float(r.output.split("perplexity of")[1].split(":")[1].split("±")[0])
    # a random 512-token model is near-uniform: perplexity in the hundreds, never 0 or inf
    assert 10 < value < 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_streams_chat_completions_to_the_openai_client(tiny):
    import openai
    port = _free_port()
    proc = subprocess.Popen(BITNET + ["serve", "-m", str(tiny), "--port", str(port), "--alias", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # `bitnet serve` says where it serves only once llama-server answers /health (before
        # that llama-server answers 503 "Loading model"): that line is what a user waits for
        deadline = time.time() + 120
        while "Ctrl-C stops it" not in " ".join("".join(out).split()):
            assert proc.poll() is None and time.time() < deadline, "".join(out)[-2000:] or "no output"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=30, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=8, temperature=0, stream=True)
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        assert len(pieces) >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_chat_as_a_person_would_in_a_terminal(tiny):
    """pexpect drives `bitnet chat` on a pseudo-terminal: prompt, reply, prompt again, quit."""
    import pexpect
    child = pexpect.spawn(BITNET[0], BITNET[1:] + ["chat", "-m", str(tiny), "-n", "6", "--temp", "0"],
                          env=dict(os.environ, TERM="dumb", COLUMNS="100"), encoding="utf-8", timeout=60)
    child.expect_exact("> ")
    child.sendline("hello")
    child.expect_exact("> ")  # a reply was written, then the next prompt
    assert child.before.strip()
    child.sendline("")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def _info_rows(output: str) -> dict[str, list[str]]:
    return {cells[1].strip(): [c.strip() for c in cells[2:-1]]
            for cells in (line.split("│") for line in output.splitlines() if line.count("│") > 3)}


def test_dummy_3b_i2_s_is_all_i2_s_at_two_bits(tmp_path):
    """The 3B shape (FFN rows of 8640 = 67.5 groups of 128; embedding rows of 3200, no multiple of
    Q6_K's 256) in I2_S: every BitLinear I2_S (ffn_down padded to 68 groups), no F16, about 2 bits
    per weight; the default Q6_K embedding is replaced by Q8_0 and the CLI says so."""
    out = tmp_path / "d3b-i2_s.gguf"
    r = runner.invoke(app, ["dummy", "--shape", "3b", "-q", "i2_s", "--layers", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "q6_k cannot hold token embedding rows of 3200 values" in r.output and "q8_0" in r.output
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0, r.output
    rows = _info_rows(r.output)
    assert {"I2_S", "Q8_0", "F32"} <= set(rows) and not {"F16", "BF16", "TL2", "TL1"} & set(rows), rows
    assert rows["I2_S"][0] == "7" and 2.0 <= float(rows["I2_S"][3]) <= 2.0 * 1.01, rows["I2_S"]
    # an explicit type that cannot hold the rows is a one-line error naming those that can
    r = runner.invoke(app, ["dummy", "--shape", "3b", "--embd-type", "q6_k", "--layers", "1", "-o", str(tmp_path / "x.gguf")])
    assert r.exit_code != 0 and "choose one of" in r.output and "q8_0" in r.output and "Traceback" not in r.output


def test_setup_refuses_both_sources_before_building(monkeypatch, tmp_path):
    from bitnet_tools import engine
    built = []
    monkeypatch.setattr(engine, "build", lambda **kw: built.append(kw) or {"rebuilt": False, "flavor": "native", "key": "x"})
    r = runner.invoke(app, ["setup", "--hf-repo", "a/b", "--model-dir", str(tmp_path)])
    assert r.exit_code != 0 and "not both" in r.output, r.output
    assert built == [], "the engine was built before the arguments were checked"


def test_tools_follow_the_installed_flavor(monkeypatch, tmp_path):
    """After `bitnet setup --portable` the installed build is the portable flavor: the CLI's tools
    (bench, ppl), bench's engine key and the tests' fixture all follow it, not "native"."""
    from bitnet_tools import bench, cli, engine
    pin = engine.read_pin()
    flavor = engine.portable_flavor()
    key = engine.build_key(pin, flavor)
    monkeypatch.setattr(engine, "BUILD", tmp_path)
    (tmp_path / flavor).mkdir()
    engine.stamp_path(flavor).write_text('{"key": "%s"}' % key)
    engine.tools_dir(flavor).mkdir(parents=True)
    for t in engine.TOOLS:
        (engine.tools_dir(flavor) / t).touch()
    monkeypatch.setattr(engine, "installed_version", lambda: engine.wheel_version(pin, key))
    assert engine.installed_build() == (flavor, key)
    assert cli._current_tools() == tmp_path / flavor / "tools" / "bin"
    assert bench._engine_key() == key
    # and with nothing current, one line that says what to run
    monkeypatch.setattr(engine, "installed_version", lambda: None)
    with pytest.raises(engine.EngineError, match="bitnet setup"):
        engine.installed_build()
