"""`bitnet serve` (llama.cpp's llama-server from our build, supervised): the openai client gets
answers, bad requests get 4xx and the server keeps serving, a client that hangs up frees its
slot, Ctrl-C leaves no process behind, and a bounded soak of 16 streaming clients. All traffic
is on loopback; every request loop is bounded in count and time."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bitnet_tools import dummy, loadtest
from bitnet_tools.server import free_port, health, rss_kib

ALIAS = "tiny-bitnet"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Served:
    """`bitnet serve` run as users run it, in a subprocess."""

    def __init__(self, model: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "bitnet_tools.cli", "serve", "-m", str(model), "--port",
                                      str(self.port), "--alias", ALIAS, "--log-file", str(log), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # ready when bitnet serve says so (it waits for /health itself)
        line = self.proc.stderr.readline()
        assert "serving" in line, line + self.proc.communicate(timeout=120)[1]
        assert health(self.url) == 200
        (self.server_pid,) = _children(self.proc.pid)

    def stop(self, sig=signal.SIGINT) -> None:
        self.proc.send_signal(sig)  # as Ctrl-C (or a service manager's stop)
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0 and "stopped" in err, err
        deadline = time.monotonic() + 10
        while _alive(self.server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(self.server_pid), "llama-server outlived bitnet serve"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return dummy.write(tmp_path_factory.mktemp("serve") / "tiny-i2_s.gguf", "tiny", "i2_s")


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    # a 2 MiB prompt cache fills during the soak's warm-up (the default 2 GiB would grow for
    # minutes by design: each finished request adds its state, ~30 KiB here), so a later rise of
    # the server's memory would be a leak
    s = Served(model, tmp_path_factory.mktemp("log") / "serve.log", "-np", "4", "-c", "1024", "-t", "2",
               "--cache-ram", "2")
    yield s
    s.stop()


def _post(url: str, path: str, body: bytes | dict, timeout: float = 60) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        text = e.read().decode("utf-8", "replace")
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"raw": text}


def test_the_openai_client_gets_chat_streamed_and_not_and_completions(served):
    from openai import OpenAI
    client = OpenAI(base_url=served.url + "/v1", api_key="unused", timeout=60, max_retries=0)
    assert ALIAS in [m.id for m in client.models.list().data]
    r = client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens > 0
    assert isinstance(r.choices[0].message.content, str)
    chunks = list(client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=8, stream=True))
    assert any(c.choices and c.choices[0].delta.content for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["length"], ["stop"])
    c = client.completions.create(model=ALIAS, prompt="Once upon a time", max_tokens=8)
    assert c.choices[0].finish_reason in ("length", "stop") and c.usage.completion_tokens > 0


BAD_REQUESTS = {
    "invalid json": b'{"messages": [',
    "no messages": {"model": ALIAS, "max_tokens": 4},
    "prompt longer than the context": {"model": ALIAS, "messages": [{"role": "user", "content": "word " * 3000}],
                                       "max_tokens": 4},
    "max_tokens 10^9": {"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10**9},
    "negative temperature": {"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                             "temperature": -1},
    "unknown model": {"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(served, case):
    status, body = _post(served.url, "/v1/chat/completions", BAD_REQUESTS[case])
    assert 400 <= status < 500, (status, body)
    assert "error" in body and str(body["error"].get("message", "")).strip(), body
    ok, answer = _post(served.url, "/v1/chat/completions",
                       {"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert ok == 200 and answer["choices"][0]["finish_reason"] in ("length", "stop")


def _busy_slots(url: str) -> int:
    with urllib.request.urlopen(url + "/slots", timeout=10) as r:
        return sum(1 for s in json.load(r) if s.get("is_processing"))


def test_a_client_that_hangs_up_mid_stream_frees_its_slot(model, tmp_path):
    """One slot, a request that would generate for a long time: the client reads a few tokens and
    closes the connection; the slot is idle again within seconds and the next request is served."""
    s = Served(model, tmp_path / "serve.log", "-np", "1", "-c", "8192", "-t", "2")
    try:
        body = json.dumps({"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4000,
                           "ignore_eos": True, "stream": True}).encode()
        req = urllib.request.Request(s.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        r = urllib.request.urlopen(req, timeout=60)
        for _ in range(5):
            r.readline()
        assert _busy_slots(s.url) == 1
        r.close()
        deadline = time.monotonic() + 10
        while _busy_slots(s.url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _busy_slots(s.url) == 0, "the slot was not freed after the client hung up"
        status, answer = _post(s.url, "/v1/chat/completions",
                               {"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}, timeout=30)
        assert status == 200
    finally:
        s.stop(signal.SIGTERM)


def test_a_taken_port_and_a_model_that_fails_to_load_are_one_line_errors(model, tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "serve", "-m", str(model), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1 and f"port {port}" in errors[0] and "--port" in errors[0], r.stderr
    # a GGUF our checks pass but llama.cpp cannot load: a qwen3 header over bitnet tensors
    broken = dummy.write(tmp_path / "broken.gguf", "tiny", "i2_s", arch="qwen3")
    log = tmp_path / "broken.log"
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "serve", "-m", str(broken), "--port", str(free_port()),
                        "--log-file", str(log)], capture_output=True, text=True, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1, r.stderr
    assert "stopped while loading broken.gguf" in errors[0] and str(log) in " ".join(r.stderr.split()), r.stderr


def test_soak_16_streaming_clients(served):
    """About two minutes of 16 concurrent streaming clients (4 slots: requests queue): no 5xx,
    every response complete, and the server's memory flat after warm-up (within 5 %)."""
    # 128 requests (x ~30 KiB of state) fill the prompt cache however slow the machine is
    warm = loadtest.run_level(served.url, ALIAS, 16, 8, 32, time_limit=300)
    assert warm.complete == warm.requests and not warm.errors, warm
    rss_after_warmup = rss_kib(served.server_pid)
    soak = loadtest.run_level(served.url, ALIAS, 16, 10_000, 32, time_limit=float(os.environ.get("BITNET_SOAK_SECONDS", 95)))
    rss_end = rss_kib(served.server_pid)
    print(f"soak: {soak.requests} requests, {soak.tokens_per_s:.0f} t/s aggregate, TTFT p95 {soak.ttft_p95:.2f} s, "
          f"RSS {rss_after_warmup} -> {rss_end} KiB")
    assert soak.requests >= 16 and soak.complete == soak.requests and not soak.errors, soak
    assert abs(rss_end - rss_after_warmup) <= 0.05 * rss_after_warmup
