#!/usr/bin/env python3
"""Live captions from a running qasr-live daemon: a small, self-contained WebSocket subscriber.

Needs only Python 3.11+ and the `websockets` package (no qasr-live import), so it can be copied anywhere::

    python3 examples/subscriber.py                 # finds the daemon through $XDG_RUNTIME_DIR/qasr-live
    python3 examples/subscriber.py --runtime-dir DIR
    python3 examples/subscriber.py --url ws://127.0.0.1:8765 --token TOKEN

On a terminal the current utterance is one line: committed text, then the unstable tail (dimmed), redrawn on
every partial; when the utterance ends the line is kept and a new one starts. When stdout is not a terminal
(a pipe, a file) only committed text is written, as it arrives, one line per utterance. When the daemon times
words (recognition.timestamps with an aligner), each utterance's words follow it on a line of their own, on
stderr: ``[12.34-12.58] Hello, [12.58-12.90] world!``; the language detected is shown with them.

It connects with the read-only token, so it can watch but not control. When the connection drops (daemon
restart, suspend) it reconnects with ``?since_seq=LAST&session=ID`` and the daemon replays what was missed, so no
committed text is lost or repeated. Protocol: docs/websocket.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException


def default_runtime_dir() -> Path:
    """Where the daemon keeps its URL and token files (its control.runtime_dir default)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "qasr-live"
    return Path(tempfile.gettempdir()) / f"qasr-live-{os.getuid()}"


class Captions:
    """Turns events into text: commits are appended and never changed; a partial replaces the tail."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.committed = ""  # of the current utterance
        self.tail = ""
        self.rev = -1

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "utterance_start":
            self.committed, self.tail, self.rev = "", "", -1
        elif kind == "partial" and event["rev"] > self.rev:  # an older revision can never replace a newer one
            self.rev, self.tail = event["rev"], event["text"]
        elif kind == "commit":
            self.committed += event["text"]
            self.tail = ""  # the committed text came out of the tail; the next partial brings the rest
            if not self.live:
                self.out.write(event["text"])
        elif kind == "utterance_end":
            self.tail = ""
            if event["reason"] == "no_speech" and not self.committed:
                self.committed = "(no speech)" if self.live else ""
            self.draw()
            if self.live or self.committed:
                self.out.write("\n")
            self.out.flush()
            self.committed, self.rev = "", -1
            return
        elif kind == "utterance_words":  # after utterance_end: the words of an utterance already shown
            spans = zip(event["words"], event["start"], event["end"], strict=True)
            times = " ".join(f"[{a:.2f}-{b:.2f}] {w}" for w, a, b in spans)
            print(f"  ({event['language'] or '?'}) {times}", file=sys.stderr, flush=True)
            return
        elif kind == "error":
            print(f"[{event['code']}] {event['message']}", file=sys.stderr)
            return
        else:
            return
        self.draw()

    def draw(self) -> None:
        if self.live:
            width = shutil.get_terminal_size().columns - 1
            text = (self.committed + self.tail).lstrip()
            cut = max(0, len(text) - width)  # keep to one line: show the end of a long utterance
            shown, tail_len = text[cut:], min(len(self.tail), len(text) - cut)
            head, tail = shown[: len(shown) - tail_len], shown[len(shown) - tail_len :]
            self.out.write(f"\r\x1b[K{head}\x1b[2m{tail}\x1b[0m")
        self.out.flush()


async def follow(args: argparse.Namespace) -> None:
    captions = Captions(sys.stdout)
    session: str | None = None
    last_seq = 0  # the last stream event received (seq 0 marks connection messages: hello, state snapshot, replies)
    delay = 0.5
    while True:
        try:
            url = args.url or (args.runtime_dir / "websocket").read_text().strip()
            token = args.token or (args.runtime_dir / "read-token").read_text().strip()
            query = f"?since_seq={last_seq}&session={quote(session)}" if session else ""
            async with connect(url + "/" + query, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                delay = 0.5
                async for raw in ws:
                    event = json.loads(raw)
                    if event["type"] == "hello" and event["session_id"] != session:
                        # a new daemon run numbers from 1 again; it replays its retained events to us
                        session, last_seq = event["session_id"], 0
                    if event["seq"] > last_seq:
                        last_seq = event["seq"]
                    captions.handle(event)
            reason = "the daemon closed the connection"
        except FileNotFoundError as e:
            reason = f"daemon not running? ({e.filename} is missing)"
        except InvalidStatus as e:
            reason = f"refused: {e.response.status_code} {e.response.body.decode(errors='replace').strip()}"
        except (OSError, WebSocketException) as e:
            reason = f"{type(e).__name__}: {e}"
        print(f"\n[disconnected: {reason}; retrying in {delay:.1f} s]", file=sys.stderr)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-dir", type=Path, default=default_runtime_dir(), help="the daemon's runtime dir")
    parser.add_argument("--url", help="ws://HOST:PORT (default: read from the runtime dir)")
    parser.add_argument("--token", help="token (default: the runtime dir's read-token)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(follow(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
