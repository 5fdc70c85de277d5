"""Hugging Face hub downloads (huggingface_hub) and the defaults of the repos we know.

A repo holds a checkpoint (config.json + safetensors), GGUF files (Microsoft's
`ggml-model-i2_s.gguf`), or both. `list_files` says which (from the hub, or offline from the
local cache); a checkpoint comes by snapshot_download of only the files a conversion needs, a
GGUF by hf_hub_download of the one file chosen. Both resume interrupted downloads and honour
HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE and tokens (HF_TOKEN or `hf auth login`).
"""
from __future__ import annotations

import errno
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                  "chat_template.jinja", "chat_template.json",
                  "modules.json", "1_Pooling/config.json"]   # sentence-transformers: how an embedding model pools


@dataclass(frozen=True)
class RepoDefaults:
    quant: str | None = None  # None: the type that measures fastest here (bitnet_tools.fastest)
    embd: str | None = None  # None: the converter's choice (q6_k for large vocabularies, else f16)


# the repos bitnet.cpp's setup supports; others are tried by architecture
KNOWN_REPOS: dict[str, RepoDefaults] = {
    "1bitLLM/bitnet_b1_58-large": RepoDefaults(),
    "1bitLLM/bitnet_b1_58-3B": RepoDefaults(),
    "HF1BitLLM/Llama3-8B-1.58-100B-tokens": RepoDefaults(),
    "microsoft/BitNet-b1.58-2B-4T": RepoDefaults(embd="q6_k"),
    "microsoft/BitNet-b1.58-2B-4T-bf16": RepoDefaults(embd="q6_k"),
    "microsoft/bitnet-b1.58-2B-4T-gguf": RepoDefaults(),  # ggml-model-i2_s.gguf, as bitnet.cpp's README installs it
    # text embeddings (last-token pooling); I2_S: their published type, and what bitnet.cpp measures them in
    "microsoft/bitnet-embedding-0.6b": RepoDefaults(quant="i2_s", embd="f16"),
    "microsoft/bitnet-embedding-270m": RepoDefaults(quant="i2_s", embd="f16"),
    **{f"tiiuae/Falcon3-{s}{v}-1.58bit": RepoDefaults() for s in ("1B", "3B", "7B", "10B") for v in ("", "-Instruct")},
    **{f"tiiuae/Falcon-E-{s}-{v}": RepoDefaults() for s in ("1B", "3B") for v in ("Base", "Instruct")},
}


class HubError(RuntimeError):
    """A download that cannot be done; the message names the cause and the fix."""


def defaults_for(repo: str) -> RepoDefaults:
    return KNOWN_REPOS.get(repo, RepoDefaults())


@contextmanager
def _hub_errors(repo: str, revision: str | None):
    """huggingface_hub's failures as one-line HubErrors naming the cause and the fix."""
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    try:
        yield
    except GatedRepoError:
        raise HubError(f"{repo} is gated: accept its terms on the hub and log in (hf auth login, or set HF_TOKEN)")
    except RepositoryNotFoundError:
        raise HubError(f"repo {repo} not found (or private): check the name, or log in for private repos")
    except RevisionNotFoundError:
        raise HubError(f"revision {revision!r} of {repo} not found: check --revision")
    except LocalEntryNotFoundError:
        raise HubError(f"{repo} is not in the local hub cache and the hub cannot be reached (offline: "
                       "HF_HUB_OFFLINE is set or no network): download it once online, or use --model-dir")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise HubError(f"disk full while downloading {repo}: free space in the hub cache "
                           "(HF_HOME) and run again; the download resumes")
        raise HubError(f"downloading {repo} failed: {e}")


def download(repo: str, revision: str | None = None, token: str | None = None) -> Path:
    """The repo's checkpoint in the hub cache (downloaded, resumed or reused); its local path."""
    from huggingface_hub import snapshot_download
    with _hub_errors(repo, revision):
        path = snapshot_download(repo_id=repo, revision=revision, token=token, allow_patterns=ALLOW_PATTERNS)
    return Path(path)


def download_file(repo: str, filename: str, revision: str | None = None, token: str | None = None) -> Path:
    """One file of the repo in the hub cache (downloaded, resumed or reused); its local path."""
    from huggingface_hub import hf_hub_download
    with _hub_errors(repo, revision):
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision, token=token))


def list_files(repo: str, revision: str | None = None, token: str | None = None) -> list[str]:
    """The repo's file names: from the hub, or where it cannot be reached (offline) the files of
    its snapshot in the local cache."""
    import httpx2
    from huggingface_hub import HfApi
    with _hub_errors(repo, revision):
        try:
            return HfApi().list_repo_files(repo, revision=revision, token=token)
        except (ConnectionError, httpx2.TransportError) as e:  # offline mode is a ConnectionError too
            files = cached_files(repo, revision)
            if files is None:
                from huggingface_hub.errors import LocalEntryNotFoundError
                raise LocalEntryNotFoundError(str(e)) from None
            return files


def cached_files(repo: str, revision: str | None = None) -> list[str] | None:
    """Files of the repo's cached snapshot for `revision` (a branch, tag or commit; main by
    default), or None when the cache has none."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound
    try:
        info = scan_cache_dir()
    except CacheNotFound:
        return None
    rev = revision or "main"
    for r in info.repos:
        if r.repo_id == repo and r.repo_type == "model":
            for snap in r.revisions:
                if rev in snap.refs or snap.commit_hash == rev:
                    return sorted(str(f.file_path.relative_to(snap.snapshot_path)) for f in snap.files)
    return None


# ---------------------------------------------------------------- what a repo or folder holds

def gguf_type(filename: str) -> str | None:
    """The ternary type a GGUF file's name says it holds (ggml-model-i2_s.gguf -> i2_s), or None."""
    from .transcode import SOURCE_TYPE_NAMES
    name = Path(filename).name.lower()
    if not name.endswith(".gguf") or re.search(r"-\d{5}-of-\d{5}\.gguf$", name):
        return None  # split GGUFs are not supported
    for t in SOURCE_TYPE_NAMES:
        if re.search(rf"(?<![a-z0-9]){t}(?![a-z0-9])", name):
            return t
    return None


def ternary_ggufs(files: list[str]) -> dict[str, str]:
    """{type: file name} of the ternary GGUFs among `files` (the first of each type)."""
    found: dict[str, str] = {}
    for f in sorted(files):
        t = gguf_type(f)
        if t is not None:
            found.setdefault(t, f)
    return found


def gguf_source(ggufs: dict[str, str], qtype: str | None) -> str:
    """The GGUF to start from: the one of `qtype` if there is one, else the best to transcode
    (I2_S first: one scale, exact)."""
    from .transcode import SOURCE_TYPE_NAMES
    return ggufs.get(qtype) or next(ggufs[t] for t in SOURCE_TYPE_NAMES if t in ggufs)


def has_checkpoint(files: list[str]) -> bool:
    return "config.json" in files and any(f.endswith(".safetensors") for f in files)
