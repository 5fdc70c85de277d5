"""`bitnet serve`: llama.cpp's own llama-server, built from our patched tree, supervised from Python.

llama-server decodes every active request in one batch per step (continuous batching over N
slots), so several users share each read of the weights; llama-cpp-python's server would decode
one request at a time. Python only starts it, waits for /health, reports failures in one line
(with the server's log), and stops it: the process dies with us (PR_SET_PDEATHSIG) and is
stopped on Ctrl-C, so nothing is left behind.

    with running(model, port=8080) as url: ...   # tests, the load test
"""
from __future__ import annotations

import ctypes
import json
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .embed import pooling_type
from .runtime import check_model_file, diagnose_model_file, engine_reason, physical_cores

READY_TIMEOUT = 600.0   # seconds to load a model (a 100B-shape file from a cold disk takes minutes)
STOP_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """The server cannot start or stopped; the message names the cause, the fix and the log."""


def default_parallel() -> int:
    """Slots (concurrent requests decoded together): a decode step over B slots reads the weights
    once, so B up to a few per core costs little more than one; beyond that requests wait."""
    return max(4, 2 * physical_cores())


@dataclass(frozen=True)
class ServeOptions:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8080
    parallel: int = 0          # 0: default_parallel()
    ctx: int = 4096            # context of each request (slot); the server holds parallel x ctx
    threads: int = 0           # 0: physical cores
    alias: str | None = None   # the model name clients send and /v1/models lists (default: file stem)
    api_key: str | None = None
    # host-RAM cache of finished requests' KV states, so a returning conversation skips its
    # prompt (llama.cpp's default, 8 GiB, is a third of a 24 GiB machine); 0 disables it
    cache_ram_mib: int = 2048
    rpc: tuple[str, ...] = ()            # RPC workers holding the layers (bitnet_tools.rpc)
    tensor_split: tuple[float, ...] = ()  # share per worker; empty: by their free memory

    def command(self, binary: Path) -> list[str]:
        parallel = self.parallel or default_parallel()
        threads = self.threads or physical_cores()
        cmd = [str(binary), "-m", str(self.model), "--host", self.host, "--port", str(self.port),
               "-np", str(parallel), "-c", str(self.ctx * parallel), "--cont-batching",
               "-t", str(threads), "-tb", str(threads), "--alias", self.alias or self.model.stem,
               "--cache-ram", str(self.cache_ram_mib), "--jinja", "--no-webui", "--metrics"]
        if pooling_type(self.model) is not None:
            # an embedding model: /v1/embeddings, unit length (llama-server's default for it); a text is
            # embedded in one step, so one batch must hold the longest text a slot takes
            cmd += ["--embeddings", "-b", str(self.ctx), "-ub", str(self.ctx)]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        if self.rpc:
            cmd += ["--rpc", ",".join(self.rpc), "-ngl", "999"]
            if self.tensor_split:
                cmd += ["-ts", ",".join(f"{x:g}" for x in self.tensor_split)]
        return cmd

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # as llama-server binds: a port whose last connections are in TIME_WAIT is free to it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started us exits, however it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the terminal's process group: we stop it


def _last_error(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    # an engine abort names its cause after the source line ("ggml-rpc.cpp:463: RPC worker ... stopped answering")
    aborted = [m.group(1) for ln in lines if (m := re.search(r"\.(?:c|cpp):\d+: (.+)", ln))]
    if aborted:
        return aborted[-1][:400]
    # the engine's refusal of the model or context ("0.00.014 E llama_model_load: error loading model: ...")
    refused = [m.group(1) for ln in lines if (m := re.match(r"[\d.]+ E (?:\w+ +)?(\w+: .+)", ln))]
    if refused and (reason := engine_reason(refused)):
        return reason[:400]
    for ln in reversed(lines):
        if any(w in ln.lower() for w in ("error", "failed", "exception", "abort", "invalid", "unable")):
            return ln[:240]
    return lines[-1][:240] if lines else "no output"


def health(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of GET /health (200 ready, 503 loading), None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def start(opts: ServeOptions, binary: Path, log: Path) -> subprocess.Popen:
    """Start llama-server and return once it answers /health with 200; ServerError otherwise."""
    check_model_file(opts.model)
    if not binary.exists():
        raise ServerError(f"{binary} is missing: run 'bitnet setup' (it builds llama-server with the engine)")
    if port_in_use(opts.host, opts.port):
        raise ServerError(f"port {opts.port} on {opts.host} is in use: choose another with --port")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(opts.command(binary), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                diagnose_model_file(opts.model)   # our words for a file the engine refused, if gguf-py sees why
                raise ServerError(f"llama-server stopped while loading {opts.model.name} (exit {proc.returncode}): "
                                  f"{_last_error(log)} (full log: {log})")
            if health(opts.url, timeout=1.0) == 200:
                return proc
            time.sleep(0.2)
        raise ServerError(f"llama-server did not become ready in {READY_TIMEOUT:.0f} s (full log: {log})")
    except BaseException:  # not ready, or Ctrl-C while loading: no server is left behind
        stop(proc)
        raise


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> int:
    """Stop llama-server (SIGTERM, then SIGKILL) and reap it; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def default_log(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"bitnet-serve-{port}.log"


@contextmanager
def running(opts: ServeOptions, binary: Path, log: Path | None = None):
    """llama-server for the duration of a with-block; yields (url, process)."""
    proc = start(opts, binary, log or default_log(opts.port))
    try:
        yield opts.url, proc
    finally:
        stop(proc)


def models(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as r:
        return [m["id"] for m in json.load(r)["data"]]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_forever(opts: ServeOptions, binary: Path, log: Path, console) -> int:
    """`bitnet serve`: start, say where, wait until Ctrl-C (or SIGTERM) or the server stops; the
    exit code (130 when interrupted while loading)."""
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop is a Ctrl-C
    try:
        proc = start(opts, binary, log)
    except KeyboardInterrupt:
        console.print("interrupted while loading: stopped")
        return 130
    parallel = opts.parallel or default_parallel()
    # llama.cpp caps a slot's context at the model's training context: say what it really is
    found = re.search(r"n_ctx_slot = (\d+)", log.read_text(errors="replace"))
    slot_ctx = int(found.group(1)) if found else opts.ctx
    console.print(f"llama-server (pid {proc.pid}) serving {opts.model.name} as '{opts.alias or opts.model.stem}' at "
                  f"{opts.url}/v1 ({parallel} slots of {slot_ctx} tokens, continuous batching); log: {log}; "
                  "Ctrl-C stops it", highlight=False)
    try:
        while True:
            code = proc.wait()
            console.print(f"llama-server stopped (exit {code}): {_last_error(log)} (full log: {log})", highlight=False)
            if not opts.rpc:
                return code or 1
            proc = _restart_when_workers_answer(opts, binary, log, console)
    except KeyboardInterrupt:
        stop(proc)
        console.print("stopped")
        return 0


RESTART_EVERY = 2.0  # seconds between attempts to start again after a lost RPC worker


def _restart_when_workers_answer(opts: ServeOptions, binary: Path, log: Path, console) -> subprocess.Popen:
    """With --rpc, a lost worker ends llama-server (ggml's RPC client cannot return that error to
    a request): the requests in flight lose their connection, new ones are refused until the
    worker answers again, and then the server starts again with the same options. Until Ctrl-C."""
    said = None
    while True:
        time.sleep(RESTART_EVERY)
        try:
            proc = start(opts, binary, log)
        except ServerError as e:
            if str(e) != said:
                console.print(f"waiting for the RPC workers to answer ({e})", highlight=False)
                said = str(e)
            continue
        console.print(f"llama-server (pid {proc.pid}) serving again at {opts.url}/v1", highlight=False)
        return proc
