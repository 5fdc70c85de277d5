"""Hugging Face hub downloads (huggingface_hub) and the defaults of the repos we know.

snapshot_download fetches only the files a conversion needs, resumes interrupted downloads,
and honours HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE and tokens (HF_TOKEN or `hf auth login`).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                  "chat_template.jinja", "chat_template.json"]


@dataclass(frozen=True)
class RepoDefaults:
    quant: str = "i2_s"
    embd: str | None = None  # None: the converter's choice (q6_k for large vocabularies, else f16)


# the repos bitnet.cpp's setup supports; others are tried by architecture
KNOWN_REPOS: dict[str, RepoDefaults] = {
    "1bitLLM/bitnet_b1_58-large": RepoDefaults(),
    "1bitLLM/bitnet_b1_58-3B": RepoDefaults(),
    "HF1BitLLM/Llama3-8B-1.58-100B-tokens": RepoDefaults(),
    "microsoft/BitNet-b1.58-2B-4T": RepoDefaults(embd="q6_k"),
    "microsoft/BitNet-b1.58-2B-4T-bf16": RepoDefaults(embd="q6_k"),
    **{f"tiiuae/Falcon3-{s}{v}-1.58bit": RepoDefaults() for s in ("1B", "3B", "7B", "10B") for v in ("", "-Instruct")},
    **{f"tiiuae/Falcon-E-{s}-{v}": RepoDefaults() for s in ("1B", "3B") for v in ("Base", "Instruct")},
}


class HubError(RuntimeError):
    """A download that cannot be done; the message names the cause and the fix."""


def defaults_for(repo: str) -> RepoDefaults:
    return KNOWN_REPOS.get(repo, RepoDefaults())


def download(repo: str, revision: str | None = None, token: str | None = None) -> Path:
    """The repo's snapshot in the hub cache (downloaded, resumed or reused); its local path."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    try:
        path = snapshot_download(repo_id=repo, revision=revision, token=token, allow_patterns=ALLOW_PATTERNS)
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
    return Path(path)
