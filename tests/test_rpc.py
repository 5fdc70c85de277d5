"""One model across several hosts through llama.cpp's RPC backend (issue: beyond one machine).

The hosts are network namespaces this test makes (ip netns + veth pairs): a worker
(`bitnet rpc-server`) in each, the client in the root namespace, real TCP between them. Every
client runs in its own process: ggml's device list is process-wide, and a lost worker ends the
process by design.

The peers that are not our build (a worker of another patch series, a stock rpc-server, a stock
client) are played by a few lines of the RPC protocol here: building a second engine would cost
CI minutes and prove no more about the refusal.
"""
from __future__ import annotations

import json
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import netns_hosts
import numpy as np
import pytest
from netns_hosts import Hosts, Worker

from bitnet_tools import dummy, engine, rpc
from bitnet_tools.server import free_port

BITNET = netns_hosts.BITNET
TOKENS = [1, 17, 42, 99, 7, 256, 300, 5]

# ---------------------------------------------------------------- the RPC protocol, for fakes

HELLO, BUILD = 14, 0xB1
CMD_ALLOC_BUFFER, CMD_SET_TENSOR, CMD_GET_TENSOR, CMD_GRAPH_COMPUTE, CMD_COUNT = 0, 6, 8, 10, 19
CAPS = 24                       # RPC_CONN_CAPS_SIZE
TENSOR = struct.Struct("<QIQ4I4II16ii10QQQQ64si")  # rpc_tensor, packed
assert TENSOR.size == 296


def installed_series() -> str:
    flavor, _ = engine.installed_build()
    return json.loads(engine.stamp_path(flavor).read_text())["series_hash"][:12]


def frame(cmd: int, payload: bytes) -> bytes:
    return bytes([cmd]) + struct.pack("<Q", len(payload)) + payload


def recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def reply(s: socket.socket) -> bytes:
    (n,) = struct.unpack("<Q", recv_exact(s, 8))
    return recv_exact(s, n)


def handshake(addr: tuple[str, int], series: str, timeout: float = 10) -> socket.socket:
    """HELLO and our build check, as our client does; the connected socket."""
    s = socket.create_connection(addr, timeout=timeout)
    s.sendall(frame(HELLO, bytes(CAPS)))
    major = reply(s)[0]
    assert major == 7, major
    s.sendall(frame(BUILD, series.encode().ljust(32, b"\0")))
    assert reply(s).rstrip(b"\0").decode() == series
    return s


class FakeWorker:
    """A worker that answers HELLO, then either answers the build check with another build id
    (a worker of another patch series) or drops the connection on it, as a stock rpc-server
    drops any command it does not know."""

    def __init__(self, series: str | None):
        self.series = series
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    recv_exact(conn, 1 + 8 + CAPS)
                    conn.sendall(struct.pack("<Q", 4 + CAPS) + bytes([7, 0, 0, 0]) + bytes(CAPS))
                    cmd = recv_exact(conn, 1)[0]
                    if cmd == BUILD and self.series:
                        recv_exact(conn, 8 + 32)
                        conn.sendall(struct.pack("<Q", 32) + self.series.encode().ljust(32, b"\0"))
                except ConnectionError:
                    pass

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- hosts: network namespaces

@pytest.fixture(scope="module")
def hosts():
    why = netns_hosts.unavailable()
    if why:
        pytest.skip(why)
    h = Hosts(2)
    yield h
    h.close()


# ---------------------------------------------------------------- models and logits

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rpc-models")
    out = {}
    for qtype in ("i2_s", "tl2", "q8_0"):
        out[qtype] = d / f"tiny-{qtype}.gguf"
        dummy.write(out[qtype], "tiny", qtype if qtype != "q8_0" else "f16", "q8_0", seed=3)
    # the stock type: every linear Q8_0, made with llama-quantize from the F16 file
    q8 = d / "tiny-q8_0-all.gguf"
    tools = engine.tools_dir(engine.installed_build()[0])
    subprocess.run([str(tools / "llama-quantize"), str(out["q8_0"]), str(q8), "Q8_0"], check=True,
                   capture_output=True, timeout=120)
    out["q8_0"] = q8
    return out


LOGITS = """
import sys, json, numpy as np
from bitnet_tools import runtime
model, out, workers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
llm = runtime.load(model, n_ctx=64, n_threads=1, logits_all=True, rpc=workers or None, type_k=0, type_v=0,
                   verbose=True)
llm.eval(json.loads(sys.argv[4]))
np.save(out, np.array(llm.scores[:llm.n_tokens], dtype=np.float32))
"""


def logits(model: Path, out: Path, workers: list[str] | None = None) -> tuple[np.ndarray, set[str]]:
    """The logits of TOKENS, and the devices the engine put the layers on."""
    r = subprocess.run([sys.executable, "-c", LOGITS, str(model), str(out), json.dumps(workers or []),
                        json.dumps(TOKENS)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    devices = set(re.findall(r"layer +\d+ assigned to device (\w+)", r.stderr))
    return np.load(out), devices


# ---------------------------------------------------------------- tests

def test_parse_workers_and_split():
    assert rpc.parse_workers("10.0.0.2:50052, 10.0.0.3:50052") == ["10.0.0.2:50052", "10.0.0.3:50052"]
    for bad in ("", "host", "host:", ":50052", "host:0", "host:70000", "h:1,h:1"):
        with pytest.raises(rpc.RPCError):
            rpc.parse_workers(bad)
    assert rpc.parse_split("3,1", 2) == [3.0, 1.0]
    for bad in ("3", "a,b", "-1,2", "0,0"):
        with pytest.raises(rpc.RPCError):
            rpc.parse_split(bad, 2)


def test_worker_binds_loopback_unless_told(tmp_path):
    r = subprocess.run(BITNET + ["rpc-server", "--host", "0.0.0.0", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--allow-network" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run(BITNET + ["rpc-server", "--mem", str(10**9)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--mem" in r.stderr, r.stderr
    w = Worker("127.0.0.1", free_port(), extra=("--mem", "1234"))
    try:
        out = None
        # the worker reports --mem as its memory: the client's default split follows it
        assert rpc.check_bind("127.0.0.1", False) is None
        assert "warning" in rpc.check_bind("10.1.2.3", True)
        s = handshake(w.addr, installed_series())
        s.sendall(frame(11, struct.pack("<I", 0)))  # GET_DEVICE_MEMORY, device 0
        free, total = struct.unpack("<QQ", reply(s))
        s.close()
        assert total == 1234 << 20 and free <= total
    finally:
        out = w.stop()
    assert "WARNING" not in out


@pytest.mark.parametrize("qtype", ["i2_s", "tl2", "q8_0"])
def test_logits_over_two_hosts_equal_local(hosts, models, tmp_path, qtype):
    """The layers split over two workers in two namespaces give the local logits bit for bit:
    the same kernels run the same ops on the same rows, only in another process."""
    workers = [Worker(addr, 50052, ns) for addr, ns in zip(hosts.addrs, hosts.names)]
    try:
        local, here = logits(models[qtype], tmp_path / "local.npy")
        remote, there = logits(models[qtype], tmp_path / "remote.npy", [w.endpoint for w in workers])
        assert all(w.alive() for w in workers)
    finally:
        outs = [w.stop() for w in workers]
    assert local.shape == remote.shape == (len(TOKENS), 512)
    assert np.isfinite(local).all() and np.ptp(local) > 0
    assert here == {"CPU"} and there == {"RPC0", "RPC1"}, (here, there)  # both hosts hold layers
    assert np.array_equal(local, remote), (np.abs(local - remote).max(), outs)


def test_infer_over_rpc_and_dead_worker(hosts, models, tmp_path):
    """`bitnet infer --rpc` generates through workers; when one is killed mid-generation, or its
    host drops off the network, the client names it and exits 1 within a bounded time."""
    for how in ("kill", "cut"):
        workers = [Worker(addr, 50053 if how == "kill" else 50054, ns) for addr, ns in zip(hosts.addrs, hosts.names)]
        try:
            client = subprocess.Popen(BITNET + ["infer", "-m", str(models["i2_s"]), "-p", "hello", "-n", "4000",
                                                "-t", "1", "--temp", "0", "-c", "4096",
                                                "--rpc", ",".join(w.endpoint for w in workers)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            first = client.stdout.read(8)  # generating
            assert first and client.poll() is None
            if how == "kill":
                workers[1].proc.kill()
            else:
                hosts.cut(1)
            t0 = time.monotonic()
            try:
                _, errtext = client.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                client.kill()
                raise AssertionError(f"client hung after the worker was {how}ed")
            took = time.monotonic() - t0
        finally:
            [w.stop() for w in workers]
            if how == "cut":
                hosts.cut(1, up=True)
        assert client.returncode == 1, (how, client.returncode, errtext[-1500:])
        lines = [ln for ln in errtext.splitlines() if ln.strip()]
        assert len(lines) == 1 and workers[1].endpoint in lines[0] and "error" in lines[0], (how, errtext[-1500:])
        assert took < 45, (how, took)


def test_absent_stock_and_other_build_workers_are_refused(models, tmp_path):
    """One line naming the worker (and both builds where it has one), exit 1, nothing generated."""
    ours = installed_series()
    other, stock = FakeWorker("0123456789ab"), FakeWorker(None)
    absent = f"127.0.0.1:{free_port()}"
    cases = {f"{other.addr[0]}:{other.addr[1]}": ["0123456789ab", ours],
             f"{stock.addr[0]}:{stock.addr[1]}": ["not a bitnet-tools engine", ours],
             absent: ["cannot be reached"]}
    try:
        for endpoint, words in cases.items():
            for cmd in (["infer", "-m", str(models["i2_s"]), "-p", "hi", "-n", "4"],
                        ["bench", "-m", str(models["i2_s"]), "-p", "8", "-n", "4", "-r", "1",
                         "--outdir", str(tmp_path)]):
                r = subprocess.run(BITNET + cmd + ["--rpc", endpoint], capture_output=True, text=True, timeout=120)
                lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
                assert r.returncode == 1 and len(lines) == 1, (cmd[0], endpoint, r.stderr[-1500:])
                assert endpoint in lines[0] and all(w in lines[0] for w in words), (cmd[0], lines)
                assert r.stdout.strip() == "", r.stdout
    finally:
        other.close(), stock.close()


def test_worker_refuses_a_client_without_the_build_check():
    """A stock llama.cpp client skips our build check: the worker serves it nothing."""
    w = Worker("127.0.0.1", free_port())
    try:
        s = socket.create_connection(w.addr, timeout=10)
        s.sendall(frame(HELLO, bytes(CAPS)))
        reply(s)
        s.sendall(frame(CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, 1024)))
        with pytest.raises((ConnectionError, OSError)):
            reply(s)
        s.close()
        wrong = socket.create_connection(w.addr, timeout=10)
        wrong.sendall(frame(HELLO, bytes(CAPS)))
        reply(wrong)
        wrong.sendall(frame(BUILD, b"0123456789ab".ljust(32, b"\0")))
        assert reply(wrong).rstrip(b"\0").decode() == installed_series()  # says who it is, then closes
        with pytest.raises((ConnectionError, OSError)):
            wrong.sendall(frame(CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, 1024)))
            reply(wrong)
        wrong.close()
        assert w.alive()
    finally:
        out = w.stop()
    assert "did not send the bitnet-tools build check" in out and "0123456789ab" in out, out


def _tensor(tid: int, ne: tuple, data: int, buf: int, op: int = 0, src: tuple = ()) -> bytes:
    """An F32 rpc_tensor, contiguous; an op's result is flagged to be computed."""
    nb = [4, 4 * ne[0], 4 * ne[0] * ne[1], 4 * ne[0] * ne[1] * ne[2]]
    flags = 16 if op else 0  # GGML_TENSOR_FLAG_COMPUTE
    return TENSOR.pack(tid, 0, buf, *ne, *nb, op, *[0] * 16, flags, *(list(src) + [0] * (10 - len(src))), 0, 0,
                       data, b"t", 0)


def test_a_graph_that_trips_an_engine_assert_ends_only_its_session():
    """A well-formed graph whose MUL_MAT shapes disagree reaches ggml's own assert in the CPU
    kernel; the worker serves each client from a child process, so only that session ends."""
    series = installed_series()
    w = Worker("127.0.0.1", free_port())
    try:
        s = handshake(w.addr, series)
        s.sendall(frame(CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, 4096)))
        buf, _ = struct.unpack("<QQ", reply(s))
        s.sendall(frame(3, struct.pack("<Q", buf)))  # BUFFER_GET_BASE
        (base,) = struct.unpack("<Q", reply(s))
        a = _tensor(1, (4, 1, 1, 1), base, buf)
        b = _tensor(2, (4, 1, 1, 1), base + 64, buf)
        c = _tensor(3, (2, 1, 1, 1), base + 256, buf, op=29, src=(1, 2))  # GGML_OP_MUL_MAT, 2 rows out of a 1-row a
        s.sendall(frame(CMD_GRAPH_COMPUTE, struct.pack("<II", 0, 1) + struct.pack("<Q", 3) + struct.pack("<I", 3)
                        + a + b + c))
        s.sendall(frame(CMD_GET_TENSOR, c + struct.pack("<QQ", 0, 4)))
        with pytest.raises((ConnectionError, OSError)):
            reply(s)
        s.close()
        handshake(w.addr, series).close()  # the next client is served
        assert w.alive()
    finally:
        out = w.stop()
    assert "client session ended by signal 6" in out and "GGML_ASSERT" in out, out[-2000:]


def _hostile_frames(rng: random.Random, buffer: tuple[int, int]) -> list[bytes]:
    """One connection's worth of hostile traffic after a valid handshake."""
    kind = rng.choice(["random", "oversized", "truncated", "tensor", "graph"])
    if kind == "random":  # any command byte, any payload
        return [bytes([rng.randrange(256)]) + struct.pack("<Q", n := rng.choice([0, 1, 8, 40, 300]))
                + rng.randbytes(n)]
    if kind == "oversized":  # a size no one can allocate, or just huge, then nothing
        return [bytes([rng.choice([CMD_SET_TENSOR, CMD_GRAPH_COMPUTE, 7, 12, 17])])
                + struct.pack("<Q", rng.choice([2**63, 2**64 - 1, 2**40, 2**33]))]
    if kind == "truncated":  # the frame ends early: the peer goes away mid-message
        whole = frame(rng.choice([CMD_SET_TENSOR, CMD_GET_TENSOR, CMD_GRAPH_COMPUTE]), rng.randbytes(400))
        return [whole[:rng.randrange(1, len(whole))]]
    ptr, size = buffer
    t = TENSOR.pack(rng.getrandbits(64), rng.choice([0, 1, 8, 36, 37, 38, 39, 40, 255, 2**31]),
                    rng.choice([ptr, ptr + 8, 0, rng.getrandbits(64)]),
                    *[rng.choice([1, 16, 2**20, 2**31]) for _ in range(4)],
                    *[rng.choice([1, 4, 2**31]) for _ in range(4)],
                    rng.randrange(120), *[rng.getrandbits(31) for _ in range(16)], 0,
                    *[rng.choice([0, rng.getrandbits(64)]) for _ in range(10)], 0, rng.getrandbits(20),
                    rng.choice([ptr, ptr + size - 4, ptr + size, rng.getrandbits(64)]), b"x", 0)
    if kind == "tensor":
        off = struct.pack("<QQ", rng.choice([0, size, 2**63]), rng.choice([4, size, 2**63]))
        return [frame(CMD_SET_TENSOR, t + off[:8] + rng.randbytes(64)), frame(CMD_GET_TENSOR, t + off)]
    n_nodes, n_tensors = rng.choice([1, 2, 2**31]), rng.choice([1, 3, 2**31])
    return [frame(CMD_GRAPH_COMPUTE, struct.pack("<II", 0, n_nodes) + struct.pack("<Q", rng.getrandbits(64))
                  + struct.pack("<I", n_tensors) + t * rng.randrange(1, 4))]


def test_hostile_messages_do_not_crash_or_hang_a_worker():
    """Random commands, impossible sizes, bad tensors (ids, types, buffers, offsets, shapes),
    truncated frames: each connection may be dropped, but the worker lives and answers the
    next client. Bounded: 400 connections, 120 s."""
    rng = random.Random(1234)
    series = installed_series()
    w = Worker("127.0.0.1", free_port())
    t0 = time.monotonic()
    try:
        for i in range(400):
            assert time.monotonic() - t0 < 120, f"too slow after {i} connections"
            s = handshake(w.addr, series)
            s.sendall(frame(CMD_ALLOC_BUFFER, struct.pack("<IQ", 0, 4096)))
            buffer = struct.unpack("<QQ", reply(s))
            try:
                for f in _hostile_frames(rng, buffer):
                    s.sendall(f)
                s.settimeout(0.05)
                s.recv(1 << 16)
            except OSError:
                pass  # dropped, or nothing to say: both fine
            s.close()
            assert w.alive(), w.stop()[-3000:]
        handshake(w.addr, series).close()  # and it still serves
    finally:
        out = w.stop()
    assert "Accepted client connection" in out


def test_serve_over_rpc_survives_a_lost_worker(models, tmp_path):
    """`bitnet serve --rpc`: answers through the worker; when the worker dies, the request in
    flight fails and llama-server stops; once the worker is back, the same server answers again
    without anyone restarting `bitnet serve`."""
    import urllib.request

    port, wport = free_port(), free_port()

    def complete(timeout=30) -> str:
        body = json.dumps({"prompt": "hello", "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)["choices"][0]["text"]

    def wait_serving(limit: float) -> str:
        deadline = time.monotonic() + limit
        while True:
            try:
                return complete()
            except OSError:
                assert time.monotonic() < deadline, "not serving"
                time.sleep(0.5)

    worker = Worker("127.0.0.1", wport)
    serve = subprocess.Popen(BITNET + ["serve", "-m", str(models["i2_s"]), "--port", str(port), "-np", "2",
                                       "-c", "256", "-t", "1", "--rpc", worker.endpoint,
                                       "--log-file", str(tmp_path / "serve.log")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(serve.stdout), daemon=True)
    reader.start()

    def wait_said(text: str, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while not any(text in line for line in said) and time.monotonic() < deadline:
            time.sleep(0.1)
        return any(text in line for line in said)

    try:
        first = wait_serving(120)
        worker.stop()
        with pytest.raises(OSError):  # the worker is gone: this request cannot be answered
            complete()
        assert wait_said("stopped answering", 30), "".join(said)[-3000:]
        assert serve.poll() is None
        worker = Worker("127.0.0.1", wport)
        again = wait_serving(60)
        assert again == first  # greedy, same model, same worker build
        # the new llama-server may answer before `bitnet serve` has seen its /health: wait for the word
        assert wait_said("serving again", 30), "".join(said)[-3000:]
        assert serve.poll() is None
    finally:
        worker.stop()
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=30)
        reader.join(timeout=10)
    assert worker.endpoint in "".join(said)


def test_split_follows_worker_memory_or_tensor_split(models, tmp_path):
    """By default layers go by each worker's free memory (what --mem offers); --tensor-split
    overrides it."""
    small = Worker("127.0.0.1", free_port(), extra=("--mem", "64"))
    big = Worker("127.0.0.1", free_port(), extra=("--mem", "16384"))
    try:
        # (llama.cpp gives layer 0 to the first worker with any share, so the big one goes first)
        _, by_memory = logits(models["i2_s"], tmp_path / "a.npy", [big.endpoint, small.endpoint])
        r = subprocess.run([sys.executable, "-c", LOGITS.replace("type_v=0,", "type_v=0, tensor_split=[0, 1],"),
                            str(models["i2_s"]), str(tmp_path / "b.npy"), json.dumps([big.endpoint, small.endpoint]),
                            json.dumps(TOKENS)], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-2000:]
        by_split = set(re.findall(r"layer +\d+ assigned to device (\w+)", r.stderr))
    finally:
        small.stop(), big.stop()
    assert by_memory == {"RPC0"}, by_memory   # 16 GiB against 64 MiB: every layer to the big worker
    assert by_split == {"RPC1"}, by_split     # all to the small one, as told
