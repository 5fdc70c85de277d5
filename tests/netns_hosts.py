"""Several hosts on one machine for RPC tests and measurements: network namespaces joined to
this one by veth pairs (ip netns, Debian's iproute2), a `bitnet rpc-server` in each, and
optionally a relay per worker that adds round-trip delay.

The delay is a relay in this namespace, not tc netem: the kernels of the project machines have
no sch_netem ("Specified qdisc kind is unknown"). The relay holds every chunk for half the
delay in each direction, in order; its own cost (a Python thread hop, tens of microseconds) is
measured by the 0 ms row through it.

    python tests/netns_hosts.py --hosts 2 [--delay-ms 1] [-t 2] -- bitnet bench -m M --rpc {workers}
"""
from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

BITNET = [sys.executable, "-m", "bitnet_tools.cli"]


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no 'ip' command (Debian package iproute2)"
    probe = f"btprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot make network namespaces here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Hosts:
    """n namespaces, each joined to this one by a veth pair on its own /24 (host i is .2, we are .1)."""

    def __init__(self, n: int):
        tag = os.getpid() % 10000
        self.names = [f"bt{tag}w{i}" for i in range(n)]
        self.addrs = [f"10.{200 + i}.{tag % 250}.2" for i in range(n)]
        self.links = [f"bt{tag}v{i}" for i in range(n)]
        try:
            for ns, addr, link in zip(self.names, self.addrs, self.links):
                ip("netns", "add", ns)
                ip("link", "set", "lo", "up", ns=ns)
                ip("link", "add", link, "type", "veth", "peer", "name", link + "p")
                ip("link", "set", link + "p", "netns", ns)
                ip("addr", "add", addr.rsplit(".", 1)[0] + ".1/24", "dev", link)
                ip("link", "set", link, "up")
                ip("addr", "add", addr + "/24", "dev", link + "p", ns=ns)
                ip("link", "set", link + "p", "up", ns=ns)
        except BaseException:
            self.close()
            raise

    def cut(self, i: int, up: bool = False):
        """Host i drops off the network (its processes live on), or comes back."""
        ip("link", "set", self.links[i], "up" if up else "down")

    def close(self):
        for ns, link in zip(self.names, self.links):
            ip("link", "del", link, check=False)
            ip("netns", "del", ns, check=False)


class Worker:
    """`bitnet rpc-server` on host:port, inside namespace ns when given."""

    def __init__(self, host: str, port: int, ns: str | None = None, threads: int = 1, extra: tuple = (),
                 env: dict | None = None):
        self.endpoint = f"{host}:{port}"
        self.addr = (host, port)
        cmd = BITNET + ["rpc-server", "--host", host, "--port", str(port), "-t", str(threads), *extra]
        if host != "127.0.0.1":
            cmd.append("--allow-network")
        if ns:
            cmd = ["ip", "netns", "exec", ns] + cmd
        # its own process group: the worker serves each client from a child process
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env=dict(os.environ, **(env or {})))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.endpoint} exited: {self.proc.stdout.read()[-2000:]}")
            try:
                socket.create_connection(self.addr, timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"worker {self.endpoint} did not start in 60 s")
                time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """Kill it and its client sessions; everything it printed."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = self.proc.communicate(timeout=10)
        return out or ""


class DelayRelay:
    """127.0.0.1:port -> target, every chunk held delay/2 in each direction (order kept)."""

    def __init__(self, target: tuple[str, int], delay_ms: float):
        self.target, self.half = target, delay_ms / 2000
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst in ((a, b), (b, a)):
                q: queue.Queue = queue.Queue()
                threading.Thread(target=self._read, args=(src, q), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, q), daemon=True).start()

    def _read(self, src: socket.socket, q: queue.Queue):
        while True:
            try:
                data = src.recv(1 << 20)
            except OSError:
                data = b""
            q.put((time.monotonic() + self.half, data))
            if not data:
                return

    @staticmethod
    def _write(dst: socket.socket, q: queue.Queue):
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:  # pass the end on (shutdown, not close: the other direction's reader may still wait)
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=2, help="Workers, one per namespace.")
    ap.add_argument("--delay-ms", type=float, default=None, help="Added round-trip delay (through a relay).")
    ap.add_argument("-t", "--threads", type=int, default=2, help="Threads of each worker.")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then a command; {workers} is the --rpc list.")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give a command after --")
    why = unavailable()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    hosts = Hosts(args.hosts)
    workers, relays = [], []
    try:
        workers = [Worker(a, 50052, ns, args.threads) for a, ns in zip(hosts.addrs, hosts.names)]
        if args.delay_ms is not None:
            relays = [DelayRelay(w.addr, args.delay_ms) for w in workers]
        endpoints = ",".join(r.endpoint for r in relays) if relays else ",".join(w.endpoint for w in workers)
        # the "hosts" share this machine's cores: the client's idle OpenMP threads must not spin on
        # the cores the workers compute on (on separate machines they would not be in the way)
        return subprocess.call([c.replace("{workers}", endpoints) for c in command],
                               env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    finally:
        for r in relays:
            r.close()
        for w in workers:
            w.stop()
        hosts.close()


if __name__ == "__main__":
    sys.exit(main())
