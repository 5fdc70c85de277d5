"""A Hugging Face hub on loopback for tests: serves repos from local folders with the few
endpoints huggingface_hub uses to list and download a model repo (repo info, tree, resolve with
HEAD and ranged GET). Pointing HF_ENDPOINT at it lets huggingface_hub itself fill its cache, so
tests exercise the real download, resume and offline code rather than a hand-made cache layout.
Every file download is recorded in `downloads`."""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class LocalHub:
    def __init__(self, repos: dict[str, Path]):
        self.repos = {name: Path(folder) for name, folder in repos.items()}
        self.downloads: list[tuple[str, str]] = []   # (repo, file) of every GET of a file
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def commit(folder: Path) -> str:
        h = hashlib.sha1()
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                h.update(str(f.relative_to(folder)).encode())
                h.update(hashlib.sha1(f.read_bytes()).digest())
        return h.hexdigest()

    def _files(self, folder: Path) -> list[Path]:
        return sorted(f for f in folder.rglob("*") if f.is_file())

    def _send(self, req, status: int, body: bytes = b"", headers: dict | None = None, send_body: bool = True):
        req.send_response(status)
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)) if "Content-Length" not in (headers or {}) else headers["Content-Length"])
        req.end_headers()
        if send_body and body:
            req.wfile.write(body)

    def _json(self, req, obj, send_body: bool):
        self._send(req, 200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, send_body)

    def _serve(self, req, body: bool) -> None:
        path = unquote(urlparse(req.path).path)
        m = (re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
             or re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
             or re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path))
        repo = m.group(1) if m else None
        if repo not in self.repos:
            self._send(req, 404, b'{"error": "Repository not found"}',
                       {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, body)
            return
        folder = self.repos[repo]
        sha = self.commit(folder)
        if "/revision/" in path:
            self._json(req, {"id": repo, "modelId": repo, "sha": sha, "private": False,
                             "siblings": [{"rfilename": str(f.relative_to(folder))} for f in self._files(folder)]}, body)
        elif "/tree/" in path:
            self._json(req, [{"type": "file", "oid": hashlib.sha1(f.read_bytes()).hexdigest(), "size": f.stat().st_size,
                              "path": str(f.relative_to(folder))} for f in self._files(folder)], body)
        else:
            f = folder / m.group(3)
            if not f.is_file():
                self._send(req, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}, body)
                return
            data = f.read_bytes()
            headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("Range", "") or "")
            if body:
                self.downloads.append((repo, m.group(3)))
            if rng:
                start = int(rng.group(1))
                end = int(rng.group(2)) if rng.group(2) else len(data) - 1
                part = data[start:end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                self._send(req, 206, part, headers, body)
            else:
                self._send(req, 200, data, headers, body)
