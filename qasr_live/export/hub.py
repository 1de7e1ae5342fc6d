"""The download half of `qasr-live pull`: a Qwen3-ASR checkpoint from the Hugging Face Hub into the HF cache.

The download goes through `huggingface_hub` into the normal Hugging Face cache, so it honours ``HF_ENDPOINT``,
``HF_HOME``/``HF_HUB_CACHE``, ``HF_TOKEN`` (or ``huggingface-cli login``) and ``HF_HUB_OFFLINE``, shows the hub's
progress bars, shares the files with every other tool, and resumes: a transfer that breaks off leaves a
``.incomplete`` blob which the next run continues with an HTTP Range request.

Order matters for the user's time: the repository is looked up (revision -> commit, file list and sizes), its
``config.json`` is fetched and checked to be a Qwen3-ASR checkpoint, and the free space is compared with what is
left to download, all before the first byte of weights. Only the files the exporter reads are fetched (config,
safetensors + index, tokenizer), never ``*.bin``, ONNX or README files. Files are fetched one at a time on the
calling thread, so Ctrl+C stops the transfer at once (the hub's parallel ``snapshot_download`` would keep its
worker threads downloading until they finish).

Every way it fails becomes one line naming the problem and the fix (`_download_error`); huggingface_hub is
imported lazily, so the rest of qasr-live runs without it.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qasr_live.errors import DownloadError, ExportError, Interrupted, QasrError
from qasr_live.export.checkpoint import read_checkpoint_config

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoSibling

# What the exporter reads; everything else in a repo (pytorch_model*.bin, onnx/, README, images) stays remote.
NEEDED_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_EXAMPLE = "Qwen/Qwen3-ASR-0.6B or Qwen/Qwen3-ASR-1.7B"


@dataclass(frozen=True, slots=True)
class CheckpointSource:
    """A complete checkpoint on disk and where it came from (repo None: a local directory)."""

    path: Path
    repo: str | None = None
    revision: str | None = None  # the commit sha
    ref: str | None = None  # what was asked for: main, a tag, a branch or a sha
    endpoint: str | None = None


def _needed(name: str) -> bool:
    return "/" not in name and any(fnmatch.fnmatch(name, pattern) for pattern in NEEDED_FILES)


def download_checkpoint(repo_id: str, revision: str | None, progress: Callable[[str], None]) -> CheckpointSource:
    """The complete checkpoint `repo_id` at `revision` (default main) in the Hugging Face cache: downloaded or
    resumed when the Hub can be reached, taken from the cache when it cannot (or HF_HUB_OFFLINE=1)."""
    try:
        from huggingface_hub import HfApi, constants, hf_hub_download
        from huggingface_hub.errors import OfflineModeIsEnabled
    except ImportError as e:
        raise DownloadError(
            f"`qasr-live pull` needs the huggingface_hub package ({e}); install it with "
            "`pip install huggingface_hub`, or download the checkpoint yourself and pass its directory."
        ) from None
    endpoint = constants.ENDPOINT
    ref = revision or "main"
    where = f"{repo_id} (revision {ref})"
    try:
        no_answer: tuple[type[BaseException], ...] = (OfflineModeIsEnabled, *_unreachable_types())
        try:
            info = HfApi().model_info(repo_id, revision=ref, files_metadata=True)
        except no_answer as e:
            return _from_cache(repo_id, ref, endpoint, e, progress)
        sha = info.sha or ref
        siblings = {s.rfilename: s for s in info.siblings or []}
        if "config.json" not in siblings:
            raise ExportError(f"{repo_id} has no config.json: it is not a Qwen3-ASR checkpoint. Use {_EXAMPLE}.")
        config = Path(hf_hub_download(repo_id, "config.json", revision=sha))
        snapshot = config.parent
        _remember_ref(snapshot.parent.parent, ref, sha)
        _check_config(snapshot, repo_id)
        wanted = [siblings[n] for n in sorted(siblings) if _needed(n)]
        if not any(s.rfilename.endswith(".safetensors") for s in wanted):
            raise ExportError(
                f"{repo_id} has no *.safetensors weights (only {', '.join(sorted(siblings)) or 'nothing'}); "
                f"qasr-live converts safetensors checkpoints such as {_EXAMPLE}."
            )
        cache = Path(constants.HF_HUB_CACHE)
        _check_space(cache, snapshot.parent.parent, wanted, repo_id)
        total = sum(s.size or 0 for s in wanted)
        progress(f"downloading {repo_id} at {sha[:12]} from {endpoint}: {len(wanted)} files, {total / 1e6:.1f} MB")
        for s in wanted:
            hf_hub_download(repo_id, s.rfilename, revision=sha)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while downloading {where}; what arrived is kept in the Hugging Face cache: run the same "
            "command again to resume."
        ) from None
    except QasrError:
        raise
    except Exception as e:  # classified into one line each by _download_error; what it does not know is a bug
        mapped = _download_error(e, repo_id, ref, endpoint)
        if mapped is None:
            raise
        raise mapped from e
    missing = missing_files(snapshot)
    if missing:
        raise ExportError(
            f"{repo_id} at {sha[:12]} lacks {', '.join(missing)}: it is not a complete checkpoint. Use {_EXAMPLE}."
        )
    return CheckpointSource(snapshot, repo_id, sha, ref, endpoint)


def _remember_ref(storage: Path, ref: str, sha: str) -> None:
    """Record which commit `ref` (e.g. main) was, as snapshot_download does: files fetched by commit do not, and
    an offline run finds the snapshot through it."""
    if ref == sha:
        return
    path = storage / "refs" / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sha, encoding="utf-8")


def _check_config(snapshot: Path, repo_id: str) -> None:
    """The exporter's own check, with the cache path in its message replaced by the repo id."""
    try:
        read_checkpoint_config(snapshot)
    except ExportError as e:
        raise ExportError(str(e).replace(str(snapshot), repo_id)) from None


def missing_files(snapshot: Path) -> list[str]:
    """What a checkpoint directory lacks for the exporter: config, every weight shard, the tokenizer."""
    missing = [n for n in ("config.json", "tokenizer_config.json") if not (snapshot / n).exists()]
    index = snapshot / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return [*missing, "a readable model.safetensors.index.json"]
        missing += [s for s in shards if not (snapshot / s).exists()]
    elif not (snapshot / "model.safetensors").exists():
        missing.append("model.safetensors")
    if not (snapshot / "tokenizer.json").exists() and not (
        (snapshot / "vocab.json").exists() and (snapshot / "merges.txt").exists()
    ):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    return missing


def _from_cache(
    repo_id: str, ref: str, endpoint: str, error: BaseException, progress: Callable[[str], None]
) -> CheckpointSource:
    """The Hub cannot be asked (offline mode, or unreachable): use the cached snapshot if it is complete."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import REGEX_COMMIT_HASH, repo_folder_name

    offline = bool(constants.HF_HUB_OFFLINE)
    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    sha: str | None = ref if REGEX_COMMIT_HASH.match(ref) else None
    if sha is None and (storage / "refs" / ref).is_file():
        sha = (storage / "refs" / ref).read_text(encoding="utf-8").strip()
    snapshot = storage / "snapshots" / sha if sha else None
    why = "HF_HUB_OFFLINE=1 is set" if offline else f"cannot reach {endpoint} ({_reason(error)})"
    fix = (
        "unset HF_HUB_OFFLINE to download it"
        if offline
        else "check the network or proxy (and HF_ENDPOINT), then run the same command again"
    )
    if snapshot is None or not snapshot.is_dir():
        raise DownloadError(f"{why} and {repo_id} (revision {ref}) is not in the Hugging Face cache {storage}; {fix}.")
    missing = missing_files(snapshot)
    if missing:
        raise DownloadError(
            f"{why} and the Hugging Face cache holds only part of {repo_id} at {snapshot.name[:12]} (missing "
            f"{', '.join(missing)}); {fix} (it resumes)."
        )
    _check_config(snapshot, repo_id)
    if not offline:
        progress(f"{why}: using the cached download of {repo_id} at {snapshot.name[:12]}")
    return CheckpointSource(snapshot, repo_id, snapshot.name, ref, endpoint)


def _check_space(cache: Path, storage: Path, wanted: list[RepoSibling], repo_id: str) -> None:
    """Refuse a download that cannot fit before it starts (blobs already cached, or partly, count as done)."""
    remaining = 0
    for s in wanted:
        etag = s.lfs.sha256 if s.lfs is not None else s.blob_id
        size = s.size or 0
        blob = storage / "blobs" / str(etag)
        if etag and blob.exists():
            continue
        partial = blob.with_name(blob.name + ".incomplete")
        remaining += max(0, size - (partial.stat().st_size if etag and partial.exists() else 0))
    free = free_space(cache)
    if free is not None and remaining > free:
        raise DownloadError(
            f"not enough disk space for {repo_id}: {remaining / 1e6:.1f} MB left to download, {free / 1e6:.1f} MB "
            f"free in {cache}; free some space, or set HF_HOME (or HF_HUB_CACHE) to a larger disk."
        )


def free_space(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return None


def _unreachable_types() -> tuple[type[BaseException], ...]:
    """The transport's 'no answer' errors: requests (huggingface_hub < 1.0) and httpx (>= 1.0)."""
    found: list[type[BaseException]] = []
    try:
        import requests

        found += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    try:
        import httpx

        found += [httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError]
    except ImportError:
        pass
    return tuple(found)


def _broken_transfer_types() -> tuple[type[BaseException], ...]:
    """A transfer that started and broke off (the connection closed mid-body, a read timed out)."""
    found: list[type[BaseException]] = []
    try:
        import requests

        found += [requests.RequestException]
    except ImportError:
        pass
    try:
        import httpx

        found += [httpx.TransportError]
    except ImportError:
        pass
    return tuple(found)


def _reason(error: BaseException) -> str:
    """What went wrong, in a few words (requests nests urllib3's reasons three deep in one long repr)."""
    text = str(error) or type(error).__name__
    if m := re.search(r"IncompleteRead\((\d+) bytes read, (\d+) more expected\)", text):
        return f"the connection closed after {int(m[1]):,} bytes, {int(m[2]):,} more expected"
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection broken"):
        if marker in text:
            return marker.lower()
    return " ".join(text.split())[:200]


def _download_error(e: Exception, repo_id: str, ref: str, endpoint: str) -> QasrError | None:
    """One line naming the problem and the fix for each way a download fails; None for an error we do not know."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    again = "run the same command again to resume"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        cache = Path(constants.HF_HUB_CACHE)
        free = free_space(cache) or 0
        return DownloadError(
            f"no space left on the device of the Hugging Face cache {cache} ({free / 1e6:.1f} MB free) while "
            f"downloading {repo_id}; free some space or set HF_HOME to a larger disk, then {again}."
        )
    if isinstance(e, RevisionNotFoundError):
        return DownloadError(
            f"{repo_id} has no revision {ref!r} on {endpoint}; pass an existing branch, tag or commit with "
            "--revision, or leave it out for main."
        )
    if isinstance(e, GatedRepoError):
        return DownloadError(
            f"{repo_id} is gated: accept its conditions on {endpoint}/{repo_id} while logged in, then log in here "
            "with `huggingface-cli login` (or set HF_TOKEN) and run the command again."
        )
    if isinstance(e, RepositoryNotFoundError):
        token = get_token()
        if token:
            return DownloadError(
                f"no model repository {repo_id} on {endpoint}, or the token in use (HF_TOKEN or `huggingface-cli "
                "login`) has no access to it; check the name (e.g. Qwen/Qwen3-ASR-0.6B) and the token."
            )
        return DownloadError(
            f"no model repository {repo_id} on {endpoint}, or it is private and no token was sent; check the name "
            "(e.g. Qwen/Qwen3-ASR-0.6B), or set HF_TOKEN (or run `huggingface-cli login`) for a private one."
        )
    if isinstance(e, OfflineModeIsEnabled | LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return DownloadError(
                f"HF_HUB_OFFLINE=1 is set and {repo_id} (revision {ref}) is not completely in the Hugging Face "
                f"cache {constants.HF_HUB_CACHE}; unset HF_HUB_OFFLINE to download it."
            )
        return DownloadError(
            f"lost the connection to {endpoint} while downloading {repo_id} ({_reason(e)}); check the network, "
            f"then {again}."
        )
    if isinstance(e, EntryNotFoundError):
        return DownloadError(f"{repo_id} lists a file the Hub then does not serve ({_reason(e)}); {again} later.")
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            return DownloadError(
                f"{endpoint} rejected the token (HF_TOKEN or `huggingface-cli login`) as invalid or expired; set a "
                "valid one, or unset HF_TOKEN for a public repository."
            )
        return DownloadError(
            f"{endpoint} answered HTTP {status} for {repo_id} ({_reason(e).splitlines()[0]}); try again later."
        )
    if isinstance(e, _unreachable_types()):
        return DownloadError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({_reason(e)}); check the network or proxy (and "
            "HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use a download already in the cache."
        )
    if isinstance(e, _broken_transfer_types()) or (isinstance(e, OSError) and "Consistency check" in str(e)):
        return DownloadError(f"the download of {repo_id} from {endpoint} broke off ({_reason(e)}); {again}.")
    if isinstance(e, OSError):
        return DownloadError(
            f"cannot write the Hugging Face cache {constants.HF_HUB_CACHE} ({e.strerror or e}); make it writable "
            "or set HF_HOME to a directory you own."
        )
    return None
