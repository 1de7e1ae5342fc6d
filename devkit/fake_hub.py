"""A fake Hugging Face Hub: a real HTTP server that serves directories as model repositories.

It answers the requests the real `huggingface_hub` client (0.36) makes for `snapshot_download`, `hf_hub_download`
and `HfApi.model_info`, with the headers the client reads:

- ``GET /api/models/{repo}[/revision/{rev}]`` -> ``{"id", "sha", "siblings": [{"rfilename", ...}]}`` (with
  ``?blobs=true`` each sibling also has ``size``, ``blobId`` and, for LFS files, ``lfs: {size, sha256,
  pointerSize}``);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit`` and ``ETag`` (a git blob sha1). LFS files
  (weights, anything over 10 MiB) answer like the Hub: ``302`` to an absolute ``/lfs/{sha256}`` URL with
  ``X-Linked-Size`` / ``X-Linked-Etag``; the blob itself honours ``Range`` (``206``, ``Content-Range``), which is how
  the client resumes an ``.incomplete`` file;
- errors as the Hub sends them: ``401`` + ``X-Error-Code: RepoNotFound`` for a missing repo or a private one without
  a token (``404`` when a valid token was sent), ``401``/``403`` + ``GatedRepo``, ``404`` + ``RevisionNotFound`` /
  ``EntryNotFound``, ``401`` "Invalid credentials in Authorization header" for a wrong token.

No Xet headers are ever sent, so the client takes its plain HTTP download path (the one that resumes with Range).

Test switches: ``private``/``gated`` repos need ``token``; ``cut(after=N)`` closes the next file transfer(s) after
N body bytes; ``stall(after=N)`` holds the next transfer after N bytes until ``release()`` (``stalled`` is set when
it waits); ``bytes_served``, ``range_requests`` and ``requests`` count what was served.

Run it by hand: ``python -m devkit.fake_hub DIR --repo Qwen/Qwen3-ASR-0.6B [--port N]``, then
``HF_ENDPOINT=http://127.0.0.1:N qasr-live pull Qwen/Qwen3-ASR-0.6B``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".gguf", ".pt", ".pth", ".h5", ".msgpack")
LFS_MIN_SIZE = 10 * 1024 * 1024
_SEND_BLOCK = 64 * 1024


@dataclass
class RepoFile:
    repo_id: str
    path: str
    file: Path
    size: int
    blob_id: str  # git blob sha1: the ETag of a regular file
    sha256: str
    lfs: bool


@dataclass
class FakeRepo:
    repo_id: str
    root: Path
    private: bool = False
    gated: bool = False
    files: dict[str, RepoFile] = field(default_factory=dict)
    sha: str = ""

    def scan(self) -> None:
        """(Re)read the directory: the commit sha changes whenever a file's content does."""
        files = {}
        for file in sorted(p for p in self.root.rglob("*") if p.is_file()):
            rel = file.relative_to(self.root).as_posix()
            size = file.stat().st_size
            # hashed in blocks: a served checkpoint may be gigabytes (bench/export.py serves the 1.7B one)
            git_sha1, sha256 = hashlib.sha1(b"blob %d\0" % size), hashlib.sha256()
            with open(file, "rb") as f:
                while block := f.read(1 << 24):
                    git_sha1.update(block)
                    sha256.update(block)
            lfs = rel.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
            files[rel] = RepoFile(self.repo_id, rel, file, size, git_sha1.hexdigest(), sha256.hexdigest(), lfs)
        self.files = files
        tree = "".join(f"{f.path}\0{f.blob_id}\n" for f in files.values())
        self.sha = hashlib.sha1(f"{self.repo_id}\n{tree}".encode()).hexdigest()


class FakeHub:
    """The server and its switches. Use as a context manager (or start()/close())."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.token = token
        self.lock = threading.Lock()
        self.bytes_served = 0
        self.bytes_by_file: dict[str, int] = {}  # "repo_id/path" -> body bytes sent
        self.range_requests: list[tuple[str, str]] = []  # (path, Range header)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._cut_after: int | None = None
        self._cuts_left = 0
        self._cut_files = "*"
        self._stall_after: int | None = None
        self._stall_files = "*"
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._server = _Server((host, port), _handler_class(self))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_repo(self, repo_id: str, root: str | Path, *, private: bool = False, gated: bool = False) -> FakeRepo:
        repo = FakeRepo(repo_id, Path(root), private=private, gated=gated)
        repo.scan()
        self.repos[repo_id] = repo
        return repo

    def cut(self, after: int, times: int = 1, files: str = "*") -> None:
        """Close the connection of the next `times` transfers of files matching the glob `files` after `after`
        body bytes."""
        with self.lock:
            self._cut_after, self._cuts_left, self._cut_files = after, times, files

    def stall(self, after: int, files: str = "*") -> None:
        """Hold the next transfer of a file matching `files` after `after` body bytes until release() (or 120 s);
        `stalled` is set when it waits."""
        with self.lock:
            self._stall_after, self._stall_files = after, files
        self.stalled.clear()
        self._release.clear()

    def release(self) -> None:
        with self.lock:
            self._stall_after = None
        self._release.set()

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- used by the handler ---

    def _take_transfer_limits(self, path: str) -> tuple[int | None, int | None]:
        """The cut and stall limits that apply to the transfer of `path` starting now."""
        with self.lock:
            cut = stall = None
            if self._cut_after is not None and self._cuts_left > 0 and fnmatch.fnmatch(path, self._cut_files):
                cut = self._cut_after
                self._cuts_left -= 1
            if self._stall_after is not None and fnmatch.fnmatch(path, self._stall_files):
                stall, self._stall_after = self._stall_after, None
            return cut, stall

    def _record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.requests.append((method, path, status))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-transfer (a cut, Ctrl+C) is expected here, not worth a traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_API_MODEL = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)??)(?:/revision/(?P<rev>[^/]+))?$")
_LFS = re.compile(r"^/lfs/(?P<sha256>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


class _Refused(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _handler_class(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub; every answer carries a Content-Length

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the tests read hub.requests instead

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def _dispatch(self, head: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            try:
                if m := _API_MODEL.match(path):
                    repo = self._repo(m["repo"])
                    self._check_revision(repo, m["rev"] or "main")
                    blobs = parse_qs(url.query).get("blobs", ["false"])[0].lower() == "true"
                    self._json(200, _model_info(repo, blobs), head)
                elif m := _RESOLVE.match(path):
                    repo = self._repo(m["repo"])
                    self._check_revision(repo, m["rev"])
                    entry = repo.files.get(m["path"])
                    if entry is None:
                        raise _Refused(404, "EntryNotFound", f"{m['path']} does not exist on {m['rev']}")
                    headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{entry.blob_id}"'}
                    if entry.lfs:  # like the Hub: a redirect to the storage, the file's identity in X-Linked-*
                        host = self.headers.get("Host") or f"127.0.0.1:{hub.port}"
                        headers |= {
                            "Location": f"http://{host}/lfs/{entry.sha256}",
                            "X-Linked-Size": str(entry.size),
                            "X-Linked-Etag": f'"{entry.sha256}"',
                        }
                        self._send(302, headers, b"", head)
                    else:
                        self._file(entry, headers, head)
                elif m := _LFS.match(path):
                    entry = next(
                        (f for r in hub.repos.values() for f in r.files.values() if f.sha256 == m["sha256"]), None
                    )
                    if entry is None:
                        raise _Refused(404, None, "no such blob")
                    self._file(entry, {"ETag": f'"{entry.sha256}"'}, head)
                else:
                    raise _Refused(404, None, f"no route {path}")
            except _Refused as r:
                headers = {"X-Error-Message": r.message}
                if r.code:
                    headers["X-Error-Code"] = r.code
                self._json(r.status, {"error": r.message}, head, headers)

        def _authorized(self) -> bool | None:
            """True: the valid token; False: a wrong token; None: no token."""
            auth = self.headers.get("Authorization")
            if not auth:
                return None
            return hub.token is not None and auth == f"Bearer {hub.token}"

        def _repo(self, repo_id: str) -> FakeRepo:
            auth = self._authorized()
            if auth is False:
                raise _Refused(401, None, "Invalid credentials in Authorization header")
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not auth):
                # The Hub does not tell a missing repo from a private one to a caller without a token.
                raise _Refused(404 if auth else 401, "RepoNotFound", "Repository not found")
            if repo.gated and not auth:
                raise _Refused(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated.",
                )
            return repo

        def _check_revision(self, repo: FakeRepo, rev: str) -> None:
            if rev not in ("main", repo.sha):
                raise _Refused(404, "RevisionNotFound", f"Invalid rev id: {rev}")

        def _json(self, status: int, body: object, head: bool, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self._send(status, {"Content-Type": "application/json", **(headers or {})}, data, head)

        def _send(self, status: int, headers: dict[str, str], data: bytes, head: bool) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)
            hub._record(self.command, self.path, status)

        def _file(self, entry: RepoFile, headers: dict[str, str], head: bool) -> None:
            start, end, status = 0, entry.size - 1, 200
            rng = self.headers.get("Range")
            if rng is not None and not head:
                with hub.lock:
                    hub.range_requests.append((self.path, rng))
                m = _RANGE.match(rng.strip())
                if m is None or int(m["start"]) >= entry.size:
                    raise _Refused(416, None, f"unsatisfiable range {rng}")
                start = int(m["start"])
                end = min(int(m["end"]), entry.size - 1) if m["end"] else entry.size - 1
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{entry.size}"}
            self.send_response(status)
            for k, v in {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            hub._record(self.command, self.path, status)
            if head:
                return
            cut, stall = hub._take_transfer_limits(entry.path)
            sent = 0
            with open(entry.file, "rb") as f:
                f.seek(start)
                remaining = end - start + 1
                while remaining:
                    n = min(_SEND_BLOCK, remaining)
                    for limit in (stall, cut):
                        if limit is not None and sent < limit:
                            n = min(n, limit - sent)
                    block = f.read(n)
                    self.wfile.write(block)
                    self.wfile.flush()
                    sent += len(block)
                    remaining -= len(block)
                    with hub.lock:
                        hub.bytes_served += len(block)
                        key = f"{entry.repo_id}/{entry.path}"
                        hub.bytes_by_file[key] = hub.bytes_by_file.get(key, 0) + len(block)
                    if stall is not None and sent == stall:
                        stall = None
                        hub.stalled.set()
                        hub._release.wait(120)
                    if cut is not None and sent >= cut and remaining:
                        self.close_connection = True  # the client sees the body end early: a broken transfer
                        return

    return Handler


def _model_info(repo: FakeRepo, blobs: bool) -> dict[str, object]:
    siblings: list[dict[str, object]] = []
    for f in repo.files.values():
        sibling: dict[str, object] = {"rfilename": f.path}
        if blobs:
            sibling |= {"size": f.size, "blobId": f.blob_id}
            if f.lfs:
                sibling["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
        siblings.append(sibling)
    return {
        "_id": repo.sha[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": repo.sha,
        "private": repo.private,
        "gated": "auto" if repo.gated else False,
        "disabled": False,
        "tags": ["safetensors", "qwen3_asr"],
        "siblings": siblings,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a directory as a Hugging Face model repository.")
    parser.add_argument("dir", type=Path, help="the checkpoint directory to serve")
    parser.add_argument("--repo", default="Qwen/Qwen3-ASR-0.6B", help="its repo id")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--token", help="make the repo private: requests need `Authorization: Bearer TOKEN`")
    args = parser.parse_args(argv)
    hub = FakeHub(port=args.port, token=args.token)
    repo = hub.add_repo(args.repo, args.dir, private=args.token is not None)
    print(f"serving {args.dir} as {args.repo} (revision {repo.sha}) at {hub.endpoint}", flush=True)
    print(f"HF_ENDPOINT={hub.endpoint} qasr-live pull {args.repo}", flush=True)
    try:
        hub._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub._server.server_close()


if __name__ == "__main__":
    main()
