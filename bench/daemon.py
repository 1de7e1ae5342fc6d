"""The daemon with a forced answer length, for the streaming benchmark:
``python -m bench.daemon [--tokens-per-second N] <the arguments of qasr-live serve>``.

Loads the config and the model as `qasr-live serve` does and runs the same daemon, its recognizer given the
bench's `answer_length` hook (bench/answers.py): random-weight models of the real shapes then answer (and commit)
as much text as speech would give.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bench.answers import TOKENS_PER_SECOND, tokens_per_second


def main(argv: Sequence[str] | None = None) -> int:
    from qasr_live.cli import _config, build_parser
    from qasr_live.daemon import serve
    from qasr_live.errors import QasrError
    from qasr_live.model_store import resolve_model

    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every other argument goes to `qasr-live serve` (see `qasr-live serve --help`).",
    )
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=TOKENS_PER_SECOND,
        help=f"answer length per second of audio, end-of-sequence ignored (default {TOKENS_PER_SECOND:g})",
    )
    own, rest = parser.parse_known_args(argv)
    args = build_parser().parse_args(["serve", *rest])
    # as `qasr-live serve` logs: third-party libraries log chatty INFO lines to the root logger
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("qasr_live").setLevel(logging.INFO)
    logging.getLogger("qasr_live.llama_cpp").setLevel(logging.ERROR)
    try:
        cfg = _config(args)
        return serve(cfg, resolve_model(cfg), answer_length=tokens_per_second(own.tokens_per_second))
    except QasrError as e:
        print(f"bench.daemon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
