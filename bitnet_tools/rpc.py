"""One model across several hosts with llama.cpp's RPC backend (ggml-rpc), never a protocol of ours.

A worker is llama.cpp's `ggml-rpc-server` from our build (`bitnet rpc-server`): it holds the
layers the client gives it and runs their graph with our ternary kernels. The client adds each
worker as a device (ggml_backend_rpc_add_server) before the model loads; llama.cpp then splits
the layers across those devices by their free memory (or by tensor_split) and sends each token's
hidden state through them in turn. The local process keeps only the token embeddings, so to use
this host's cores too, run a worker on it as well.

Our patch 0009 adds a build check to the handshake: a worker from another patch series, or a
stock llama.cpp rpc-server, is refused with one line naming both builds; a worker that dies or
drops off the network stops the client with its name within about 15 s (TCP keepalive).

The RPC protocol has no authentication: workers bind loopback unless told otherwise.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import re
from pathlib import Path

DEFAULT_PORT = 50052


class RPCError(ValueError):
    """A worker list or worker option that cannot work; the message names the cause and the fix."""


def parse_workers(spec: str | list[str]) -> list[str]:
    """'HOST:PORT[,HOST:PORT...]' (or a list) -> endpoints, each checked for form only."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    endpoints = [s.strip() for s in items if s.strip()]
    if not endpoints:
        raise RPCError("--rpc names no worker: write HOST:PORT[,HOST:PORT...], e.g. 10.0.0.2:50052")
    for e in endpoints:
        host, _, port = e.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RPCError(f"RPC worker {e!r} is not HOST:PORT: write it as e.g. 10.0.0.2:{DEFAULT_PORT}")
    if len(set(endpoints)) != len(endpoints):
        raise RPCError(f"--rpc names a worker twice ({','.join(endpoints)}): list each worker once")
    return endpoints


def parse_split(spec: str | list[float] | None, n_workers: int) -> list[float] | None:
    """'3,1' (or a list) -> [3.0, 1.0]: the share of layers each worker takes, in --rpc order."""
    if not spec:
        return None
    try:
        split = [float(x) for x in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError:
        raise RPCError(f"--tensor-split {spec!r} is not a list of numbers: write e.g. 3,1") from None
    if len(split) != n_workers or any(not x >= 0 for x in split) or sum(split) <= 0:
        raise RPCError(f"--tensor-split {spec!r} needs {n_workers} non-negative shares, one per --rpc worker")
    return split


# ------------------------------------------------------------------ client (in-process)

_added: list[str] = []  # ggml's device registry is process-wide: add each worker once


def _ggml() -> ctypes.CDLL:
    # ggml's functions as libllama sees them (dlsym searches a library's dependencies): the wheel
    # holds libggml.so and libggml.so.0 as two files, and opening the other would give a second,
    # empty device registry
    from llama_cpp.llama_cpp import _lib as ggml
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
    return ggml


def add_workers(endpoints: list[str]) -> None:
    """Make each worker a device of this process; a worker that is absent, stock or of another
    build raises RPCError with the engine's reason. Models loaded with n_gpu_layers > 0 after
    this use the workers (llama-cpp-python 0.3.36 has no per-model device list)."""
    from .runtime import engine_errors

    ggml = _ggml()
    reg = ggml.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RPCError("this engine was built without the RPC backend: run 'bitnet setup --engine-only' again")
    add = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(
        ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server"))
    for e in endpoints:
        if e in _added:
            continue
        with engine_errors(echo=False) as errors:  # the reason is raised, not printed too
            worker = add(e.encode())
        if not worker:
            raise RPCError(errors[-1] if errors else f"RPC worker {e} refused: see the worker's output")
        ggml.ggml_backend_register(worker)
        _added.append(e)


def added_workers() -> list[str]:
    return list(_added)


_on_abort = None  # the callback must outlive every call into the engine


def exit_on_engine_abort(say) -> None:
    """For a command-line process: an engine abort (a worker lost mid-generation: ggml's backend
    calls cannot return that error) becomes say(reason) and exit status 1, not SIGABRT with a
    backtrace. A library caller keeps ggml's default."""
    global _on_abort

    @ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    def on_abort(message):
        say(re.sub(r"^\S+:\d+: ", "", message.decode("utf-8", errors="replace")).strip())  # without file:line
        os._exit(1)

    ggml = _ggml()
    ggml.ggml_set_abort_callback.argtypes = [ctypes.c_void_p]
    ggml.ggml_set_abort_callback(ctypes.cast(on_abort, ctypes.c_void_p))
    _on_abort = on_abort


# ------------------------------------------------------------------ worker

def check_bind(host: str, allow_network: bool) -> str | None:
    """Refuses a non-loopback `host` unless allow_network; returns the warning to print for one."""
    try:
        ip = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        raise RPCError(f"--host {host!r} is not an IPv4 address: give the address of the interface to listen on") from None
    if ip.version != 4:
        raise RPCError(f"--host {host}: llama.cpp's RPC server listens on IPv4 only: give an IPv4 address")
    if ip.is_loopback:
        return None
    if not allow_network:
        raise RPCError(f"--host {host} would expose an unauthenticated RPC worker (anyone who reaches the port "
                       f"can use it, fill its memory or crash it): add --allow-network to do it "
                       f"anyway, on a trusted network or behind an SSH tunnel or WireGuard only")
    return (f"warning: RPC worker listening on {host}: the protocol has no authentication; use it only on a "
            f"trusted network, or bind 127.0.0.1 and reach it through an SSH tunnel or WireGuard")


def worker_command(binary: Path, host: str, port: int, threads: int, mem_mib: int | None) -> tuple[list[str], dict]:
    """argv and environment of one worker (`ggml-rpc-server` from our build)."""
    if not 0 < port < 65536:
        raise RPCError(f"--port {port} is not a TCP port: give 1..65535")
    # a client session that dies on a hostile message ends in one line, without a debugger attaching
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    if mem_mib is not None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
        if not 0 < mem_mib <= total:
            raise RPCError(f"--mem {mem_mib} MiB: this host has {total} MiB: give 1..{total}")
        env["BITNET_RPC_MEM_MIB"] = str(mem_mib)  # what the worker reports as its memory (patch 0009)
    return [str(binary), "-H", "127.0.0.1" if host == "localhost" else host, "-p", str(port), "-t", str(threads)], env
