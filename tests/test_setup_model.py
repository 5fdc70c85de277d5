"""`bitnet setup` with a checkpoint: from a local folder, from a hub (a loopback one, tests/local_hub.py)
and then offline from the cache huggingface_hub filled, and the failures (repo not found, offline
without a cache, disk full) -- all without a network."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tiny_checkpoints
from bitnet_tools.cli import app
from local_hub import LocalHub

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoints.build("2b4t", tmp_path_factory.mktemp("ckpt") / "tiny-2b4t")


def test_setup_from_a_local_folder_converts_verifies_and_is_idempotent(checkpoint, tmp_path):
    out = tmp_path / "models"
    r = runner.invoke(app, ["setup", "--model-dir", str(checkpoint), "--outdir", str(out), "-t", "1", "-q", "i2_s"])
    assert r.exit_code == 0, r.output
    gguf_path = out / "tiny-2b4t" / "ggml-model-i2_s.gguf"
    assert gguf_path.exists() and "verification" in r.output
    mtime = gguf_path.stat().st_mtime_ns
    r = runner.invoke(app, ["setup", "--model-dir", str(checkpoint), "--outdir", str(out), "-t", "1", "-q", "i2_s"])
    assert r.exit_code == 0 and "reusing" in r.output
    assert gguf_path.stat().st_mtime_ns == mtime


def _setup_subprocess(args: list[str], hf_home: Path, tmp_path: Path, endpoint: str | None = None) -> subprocess.CompletedProcess:
    """`bitnet setup` with its own hub cache: against `endpoint` (a LocalHub) if given, else offline."""
    env = dict(os.environ, HF_HOME=str(hf_home))
    env.pop("HF_HUB_CACHE", None)
    if endpoint:
        env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0")
    else:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "setup", *args, "--outdir", str(tmp_path / "m"),
                           "-t", "1"], capture_output=True, text=True, env=env, timeout=300)


def test_setup_from_the_hub_then_offline_from_its_cache(checkpoint, tmp_path):
    (checkpoint / "README.md").write_text("a model card, not needed for conversion\n")
    hf_home = tmp_path / "hf"
    with LocalHub({"someone/tiny-2b4t": checkpoint}) as hub:
        r = _setup_subprocess(["--hf-repo", "someone/tiny-2b4t", "-q", "i2_s"], hf_home, tmp_path, hub.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not a repo we know" in r.stderr  # unknown repos are tried by what they hold
    fetched = {f for _, f in hub.downloads}
    assert {"config.json", "model-00001-of-00002.safetensors"} <= fetched and "README.md" not in fetched  # only what converting needs
    out = tmp_path / "m" / "tiny-2b4t" / "ggml-model-i2_s.gguf"
    out.unlink()
    r = _setup_subprocess(["--hf-repo", "someone/tiny-2b4t", "-q", "i2_s"], hf_home, tmp_path)  # offline now
    assert r.returncode == 0, r.stdout + r.stderr
    assert out.exists() and "verification" in r.stdout


def test_setup_offline_without_the_model_is_a_one_line_error(tmp_path):
    r = _setup_subprocess(["--hf-repo", "someone/absent"], tmp_path / "empty-hf", tmp_path)
    assert r.returncode != 0
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "not in the local hub cache" in err[0] and "--model-dir" in err[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "m" / "absent").exists()


@pytest.mark.parametrize("failure, message", [
    ("not_found", "not found"),
    ("disk_full", "disk full"),
])
def test_failed_downloads_are_one_line_errors(monkeypatch, tmp_path, failure, message):
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def fake_list_repo_files(self, repo, **kwargs):
        if failure == "not_found":
            raise RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        return ["config.json", "model.safetensors"]

    def fake_snapshot_download(**kwargs):
        assert "config.json" in kwargs["allow_patterns"] and "*.safetensors" in kwargs["allow_patterns"]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", fake_list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    r = runner.invoke(app, ["setup", "--hf-repo", "org/name", "-q", "i2_s", "--outdir", str(tmp_path / "m")])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("*.gguf"))


def test_a_failed_write_during_conversion_leaves_nothing(checkpoint, tmp_path):
    """A real write failure: the process may write files of at most 64 KiB (RLIMIT_FSIZE), so the
    GGUF write fails part way, as on a full disk."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "setup", "--model-dir", str(checkpoint),
                        "--outdir", str(out), "-q", "i2_s"], capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert r.returncode != 0, r.stdout + r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "nothing partial was left" in err[0], r.stderr
    assert not [p for p in out.rglob("*") if p.is_file()]
