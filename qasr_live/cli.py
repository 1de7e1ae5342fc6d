"""The `qasr-live` command: parse arguments, build the config, call the library, return an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from qasr_live import __version__
from qasr_live.errors import EXIT_INTERRUPTED, QasrError

if TYPE_CHECKING:  # the commands import their modules lazily, to keep `qasr-live ctl` fast
    from qasr_live.config import AppConfig
    from qasr_live.engine.model_dir import ModelDir
    from qasr_live.engine.worker import EncoderWorker
    from qasr_live.export.pull import PullResult
    from qasr_live.offline.pipeline import Transcriber
    from qasr_live.offline.transcript import Segment, Transcript

_LOGGER = logging.getLogger("qasr_live")
EXIT_CODES = """exit status:
  0    success
  1    internal error (a bug: please report it with the traceback)
  2    usage: a bad option, config.yaml, input file or message
  3    model: the model directory is missing, incomplete or corrupt, or llama.cpp/the encoder refused it
  4    device: the microphone cannot be found, opened or kept running
  5    another daemon already runs on the same runtime directory (control.runtime_dir)
  6    doctor: a check FAILed (dictation cannot work until its fix is applied)
  7    download: the Hugging Face Hub is unreachable, refuses the repository, or the transfer broke off
  130  interrupted (Ctrl+C)"""


def _config(args: argparse.Namespace) -> AppConfig:
    from qasr_live.config_file import load_config, with_overrides

    cfg = load_config(args.config)
    overrides: dict[str, object] = {}
    sources: dict[str, str] = {}
    for option, key in (
        ("model", "model.dir"),
        ("aligner", "model.aligner"),
        ("timestamps", "recognition.timestamps"),
        ("language", "recognition.language"),
        ("context", "recognition.context"),
        ("threads", "engine.decoder_threads"),
        ("mode", "trigger.mode"),
        ("source", "audio.source"),
        ("device", "audio.device"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            overrides[key] = value
            sources[key] = f"--{option}"
    return with_overrides(cfg, overrides, sources=sources) if overrides else cfg


def cmd_transcribe(args: argparse.Namespace) -> int:
    from qasr_live.audio.files import load_audio, open_audio
    from qasr_live.engine.worker import EncoderWorker
    from qasr_live.model_store import resolve_model
    from qasr_live.offline.formats import FORMATS, CueLimits, write_outputs
    from qasr_live.offline.pipeline import Transcriber

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise QasrError(f"--format: unknown format {', '.join(bad)}; choose from {', '.join(FORMATS)}.")
    limits = CueLimits(args.max_cue_seconds, args.line_chars, args.cue_lines)
    for option, value, low in (("--max-cue-seconds", limits.max_seconds, 0.5), ("--line-chars", limits.line_chars, 8)):
        if value < low:
            raise QasrError(f"{option} {value}: too small; give at least {low}.")
    if limits.lines < 1:
        raise QasrError(f"--cue-lines {limits.lines}: give at least 1.")
    # every file checked (header, cut) before the model loads; the samples are read in blocks while decoding
    audios = [(path, open_audio(path, start=args.start, duration=args.duration)) for path in args.files]
    cfg = _config(args)
    aligner_model = _timestamps_aligner(cfg, formats)
    model = resolve_model(cfg)
    t0 = time.perf_counter()
    e, r = cfg.engine, cfg.recognition
    with contextlib.ExitStack() as stack:
        aligner = None
        if aligner_model is not None:
            from qasr_live.engine.aligner import Aligner
            from qasr_live.offline.timestamps import align_transcript

            aligner = stack.enter_context(
                Aligner(aligner_model, threads=e.decoder_threads, n_gpu_layers=e.n_gpu_layers, setting="--aligner")
            )
        encoder = stack.enter_context(
            EncoderWorker.for_offline(
                model.frontend, model.backend, e.encoder_threads, e.decoder_threads, e.encoder_providers
            )
        )
        transcriber = Transcriber(model, cfg.engine, encoder)
        stack.callback(transcriber.close)
        load_seconds = time.perf_counter() - t0
        for path, audio in audios:
            run = transcriber.stream(audio.blocks(), r.language, r.context, itn=r.itn, offset=audio.start)
            progress = _show_progress(args, audio.seconds)
            result = _print_segments(run, audio.seconds, progress=progress, start=audio.start)
            if aligner is not None:
                # the aligner needs the samples again: the (cut) audio is read whole for it, one pass
                t1 = time.perf_counter()
                samples = load_audio(path, start=audio.start, duration=audio.duration)
                result = align_transcript(
                    aligner,
                    samples,
                    result,
                    r.language,
                    warn=lambda line: print(f"qasr-live: warning: {line}", file=sys.stderr),
                    audio_start=audio.start,
                )
                _LOGGER.info("aligned %s in %.2f s", path, time.perf_counter() - t1)
            if formats != ["txt"] or args.out_dir:
                for written in write_outputs(result, path, formats, args.out_dir, limits):
                    print(f"wrote {written}", file=sys.stderr)
            if not args.quiet:
                _print_stats(path, result, model, load_seconds, _devices(transcriber, encoder))
    return 0


PROGRESS_SECONDS = 60.0  # files at least this long get a progress bar (on a terminal, or with --progress)


def _show_progress(args: argparse.Namespace, seconds: float | None) -> bool:
    if args.progress is not None:
        return bool(args.progress)
    return not args.quiet and sys.stderr.isatty() and (seconds is None or seconds >= PROGRESS_SECONDS)


def _print_segments(
    run: Generator[Segment, None, Transcript], seconds: float | None, progress: bool, start: float = 0.0
) -> Transcript:
    """Print each segment's text as soon as it is decoded: on a terminal as running text, into a pipe one line
    per segment (a reader gets each line at once); the progress bar, if any, goes to stderr."""
    live = sys.stdout.isatty()
    bar = None
    if progress:
        from tqdm import tqdm

        total = round(seconds, 1) if seconds else None
        bar = tqdm(total=total, desc="transcribing", unit="s", file=sys.stderr, leave=False)
    printed = False
    try:
        while True:
            try:
                segment = next(run)
            except StopIteration as done:
                result: Transcript = done.value
                break
            if bar is not None:
                bar.n = round(segment.end - start, 1)  # set, not added up: no float drift; times count from 0
                bar.refresh()
            if segment.text:
                if live:
                    if bar is not None:
                        bar.clear()
                    print(("" if not printed else " ") + segment.text, end="", flush=True)
                else:
                    print(segment.text, flush=True)
                printed = True
    finally:
        if bar is not None:
            bar.close()
    if live and printed:
        print(flush=True)
    elif not printed:
        print(flush=True)  # an empty transcript is still one line, as before
    return result


def _timestamps_aligner(cfg: AppConfig, formats: list[str]) -> ModelDir | None:
    """The aligner model when word times are asked for (refusing the request without one); a one-line note
    when subtitles are written without word times."""
    from qasr_live.errors import AlignmentError
    from qasr_live.model_store import resolve_aligner

    if not cfg.recognition.timestamps:
        if {"srt", "vtt"} & set(formats):
            print(
                "qasr-live: note: no word times: subtitle cues are cut in proportion to the text; pass --timestamps "
                "with an aligner (model.aligner or --aligner) to cut them at words.",
                file=sys.stderr,
            )
        return None
    aligner = resolve_aligner(cfg)
    if aligner is None:
        raise AlignmentError(
            "--timestamps needs a Qwen3-ForcedAligner model: install it with `qasr-live pull "
            "Qwen/Qwen3-ForcedAligner-0.6B` and set model.aligner (or pass --aligner NAME_OR_DIR)."
        )
    return aligner


def _devices(transcriber: Transcriber, encoder: EncoderWorker) -> list[tuple[str, str]]:
    """Stats rows: where the decoder's layers and the encoder run, and the llama.cpp build."""
    from qasr_live.engine.gpu import build_record

    record = build_record()
    build = f"{record.get('backend', '?')} build (scripts/install.sh)" if record else "not recorded (installed by pip)"
    return [
        ("decoder", transcriber.decoder.offload.summary()),
        ("encoder on", ", ".join(p.removesuffix("ExecutionProvider") for p in encoder.providers)),
        ("llama.cpp", build),
    ]


def _print_stats(
    path: Path, result: Transcript, model: ModelDir, load_seconds: float, devices: list[tuple[str, str]]
) -> None:
    s = result.stats
    rows = [
        ("file", str(path)),
        (
            "model",
            f"{model.path.name} (encoder {model.encoder_precision}, decoder {model.decoder_precision})",
        ),
        ("language", result.language or "-"),
        ("audio", f"{s.audio_seconds:.2f} s"),
        ("load", f"{load_seconds:.2f} s"),
        ("wall", f"{s.wall_seconds:.2f} s   RTF {s.rtf:.3f}"),
        ("encoder", f"{s.encoder_seconds:.2f} s"),
        ("prefill", f"{s.prefill_tokens} tokens in {s.prefill_seconds:.2f} s   {s.prefill_tps:.1f} tok/s"),
        (
            "generate",
            f"{s.generated_tokens} tokens in {s.generate_seconds:.2f} s   {s.generate_tps:.1f} tok/s",
        ),
        *devices,
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows), file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    from qasr_live.export.exporter import export_checkpoint

    export_checkpoint(
        args.src,
        args.out,
        encoders=[p for p in args.encoder.split(",") if p],
        decoders=[p for p in args.decoder.split(",") if p],
        force=args.force,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from qasr_live import model_store
    from qasr_live.export.pull import parse_precision, pull_checkpoint

    encoders, decoders = parse_precision(args.precision)
    name = model_store.check_name(args.name) if args.name else model_store.name_for(args.source)
    root = model_store.models_dir()
    result = pull_checkpoint(
        args.source,
        model_store.model_path(name, root),
        encoders,
        decoders,
        revision=args.revision,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    default = model_store.get_default(root)
    make_default: bool | None = args.default
    if model_store.is_aligner(result.path):  # it times words, it cannot be the model that transcribes
        _print_pulled(name, result, False)
        if make_default:
            print(f"  --default ignored: {name} cannot be the model that transcribes", file=sys.stderr)
        print(f"  {name} is a Qwen3-ForcedAligner: set model.aligner: {name} in config.yaml, or pass --aligner {name}")
        return 0
    if make_default is None and default != name:
        if sys.stdin.isatty():
            make_default = _confirm(f"make {name} the default model? [Y/n] ")
        else:  # a script: never take the default away from another model, but fill an empty (or stale) one
            make_default = default is None or not (root / default).is_dir()
    if make_default:
        model_store.set_default(name, root)
    _print_pulled(name, result, default == name or bool(make_default))
    return 0


def _confirm(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("", "y", "yes")  # Enter accepts; EOF ("" without newline) too


def _print_pulled(name: str, result: PullResult, is_default: bool) -> None:
    from qasr_live.engine.model_dir import open_model_dir

    precisions = open_model_dir(result.path, verify=False).manifest["precisions"]
    size = sum(f.stat().st_size for f in result.path.iterdir() if f.is_file())
    c = result.checkpoint
    origin = f"{c.repo} at {c.revision}" if c.repo else str(c.path)
    if result.converted:
        print(f"installed {name}: {origin} -> {result.path} ({size / 1e6:.1f} MB)")
    else:
        print(f"{name} is up to date: {origin} in {result.path} ({size / 1e6:.1f} MB)")
    print(
        f"  encoder {','.join(precisions['encoder'])}, decoder {','.join(precisions['decoder'])}; "
        f"download {result.download_seconds:.1f} s, conversion {result.convert_seconds:.1f} s"
    )
    if open_model_dir(result.path, verify=False).kind != "qwen3-asr":
        return
    if is_default:
        print(f"  {name} is the default model: `qasr-live transcribe FILE` and `qasr-live serve` use it")
    else:
        print(
            f"  use it with model.name: {name} in config.yaml, or make it the default with "
            f"`qasr-live models default {name}`"
        )


def cmd_models(args: argparse.Namespace) -> int:
    from qasr_live import model_store

    root = model_store.models_dir()
    if args.action == "remove":
        was_default = model_store.remove_model(args.name, root)
        print(f"removed {args.name}" + (" (it was the default: none is set now)" if was_default else ""))
    elif args.action == "default":
        model_store.set_default(args.name, root)
        print(f"{args.name} is the default model")
    else:
        print(model_store.format_table(model_store.installed_models(root), root))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from qasr_live.daemon import serve
    from qasr_live.model_store import resolve_model

    cfg = _config(args)
    return serve(cfg, resolve_model(cfg))


def cmd_ctl(args: argparse.Namespace) -> int:
    from qasr_live.control.ctl import send_command
    from qasr_live.runtime import resolve_runtime_dir

    cfg = _config(args)
    reply = send_command(resolve_runtime_dir(cfg.control.runtime_dir), args.action, timeout=args.timeout)
    if args.action == "status" or args.json:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 0 if reply.get("ok", True) else 1


def cmd_history(args: argparse.Namespace) -> int:
    from qasr_live.outputs.journal import default_journal_path, format_history, read_entries

    cfg = _config(args)
    path = Path(cfg.journal.path) if cfg.journal.path else default_journal_path()
    if not path.exists():
        print(f"no dictation yet ({path} does not exist)", file=sys.stderr)
        return 0
    entries = read_entries(path)
    print(format_history(entries[-args.n :] if args.n else entries))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from qasr_live.audio.devices import list_input_devices

    for device in list_input_devices():
        print(device.describe())
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from qasr_live.service import install_service

    install_service(str(args.config) if args.config else None, enable=not args.no_enable)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from qasr_live.config_file import default_config_path
    from qasr_live.doctor import run_doctor

    config_path = args.config.expanduser() if args.config else default_config_path()
    return run_doctor(lambda: _config(args), config_path, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qasr-live",
        description="Local dictation and transcription on Qwen3-ASR.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qasr-live {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (includes llama.cpp's)")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio files of any length")
    t.add_argument("files", nargs="+", type=Path, metavar="FILE")
    t.add_argument("--config", type=Path, help="config.yaml (default: ~/.config/qasr-live/config.yaml)")
    t.add_argument("--model", help="exported model directory (overrides model.dir)")
    t.add_argument("--language", help="force the language, e.g. English (default: detect)")
    t.add_argument("--context", help="background text or hot words for the system prompt")
    t.add_argument("--threads", type=int, help="decoder threads (overrides engine.decoder_threads)")
    t.add_argument("--format", default="txt", help="comma list of txt, srt, vtt, json (written next to each file)")
    t.add_argument(
        "--timestamps",
        action="store_const",
        const=True,
        help="time every word with the aligner (JSON words, SRT/VTT cues cut at words); sets recognition.timestamps",
    )
    t.add_argument("--aligner", help="Qwen3-ForcedAligner: installed name or directory (overrides model.aligner)")
    t.add_argument("--max-cue-seconds", type=float, default=6.0, help="longest subtitle cue cut at words (6)")
    t.add_argument("--line-chars", type=int, default=42, help="characters per subtitle line, CJK by character (42)")
    t.add_argument("--cue-lines", type=int, default=2, help="lines per subtitle cue (2)")
    t.add_argument("--out-dir", type=Path, help="write the outputs here instead of next to the audio")
    t.add_argument("--start", type=float, default=0.0, metavar="SECONDS", help="transcribe from this time on")
    t.add_argument("--duration", type=float, metavar="SECONDS", help="transcribe this much audio (default: all)")
    t.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: on a terminal, for files of a minute or more)",
    )
    t.add_argument("-q", "--quiet", action="store_true", help="no stats table")
    t.set_defaults(func=cmd_transcribe)

    e = sub.add_parser("export", help="export a Hugging Face Qwen3-ASR checkpoint to a qasr-live model directory")
    e.add_argument("src", type=Path, metavar="SRC_CHECKPOINT_DIR")
    e.add_argument("out", type=Path, metavar="OUT_MODEL_DIR")
    e.add_argument("--encoder", default="fp32,int8,int4", help="encoder precisions (fp32,int8,int4)")
    e.add_argument("--decoder", default="f16,q8_0,q4_k", help="decoder precisions (f32,f16,q8_0,q4_k)")
    e.add_argument("--force", action="store_true", help="replace OUT_MODEL_DIR if it exists")
    e.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "pull",
        help="download a Qwen3-ASR checkpoint from Hugging Face and install it as a model",
        description="Download REPO (into the Hugging Face cache: resumable; honours HF_ENDPOINT, HF_HOME, HF_TOKEN "
        "and HF_HUB_OFFLINE) or take a local checkpoint DIR, convert it, and install it under "
        "$XDG_DATA_HOME/qasr-live/models/NAME.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="REPO_OR_DIR", help="a Hub repo id (Qwen/Qwen3-ASR-0.6B) or a checkpoint dir")
    p.add_argument(
        "--precision",
        default="int8/q4_k",
        metavar="ENC/DEC",
        help="encoder/decoder precisions, each a comma list of fp32,int8,int4 / f32,f16,q8_0,q4_k (default int8/q4_k)",
    )
    p.add_argument("--name", help="the model's name (default: the repo's name, lower-cased, e.g. qwen3-asr-0.6b)")
    p.add_argument(
        "--default",
        action=argparse.BooleanOptionalAction,
        help="make it the default model (default: ask on a terminal, else only when no default is set)",
    )
    p.add_argument("--revision", help="a branch, tag or commit of the repo (default: main)")
    p.set_defaults(func=cmd_pull)

    m = sub.add_parser("models", help="list the installed models; remove one; choose the default")
    m.set_defaults(func=cmd_models)
    msub = m.add_subparsers(dest="action")
    msub.add_parser("list", help="list the installed models (the default)")
    mr = msub.add_parser("remove", help="delete an installed model")
    mr.add_argument("name", metavar="NAME")
    md = msub.add_parser("default", help="make an installed model the default")
    md.add_argument("name", metavar="NAME")

    s = sub.add_parser(
        "serve",
        help="run the dictation daemon (microphone -> text typed and published)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--config", type=Path, help="config.yaml (default: ~/.config/qasr-live/config.yaml)")
    s.add_argument("--model", help="exported model directory (overrides model.dir)")
    s.add_argument("--language", help="force the language, e.g. English (default: detect)")
    s.add_argument("--context", help="background text or hot words for the system prompt")
    s.add_argument("--mode", help="trigger mode: ptt, toggle or continuous (overrides trigger.mode)")
    s.add_argument("--device", help="input device by name (overrides audio.device)")
    s.add_argument("--source", help="a WAV file or - (raw 16 kHz s16le on stdin) instead of the microphone")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("ctl", help="control the running daemon (bind these to keys on Wayland)")
    c.add_argument(
        "action", choices=["start", "stop", "toggle", "cancel", "finalize", "ptt-press", "ptt-release", "status"]
    )
    c.add_argument("--config", type=Path, help="config.yaml of the daemon (to find its runtime directory)")
    c.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon's answer")
    c.add_argument("--json", action="store_true", help="print the daemon's answer")
    c.set_defaults(func=cmd_ctl)

    h = sub.add_parser("history", help="print recent dictation from the journal")
    h.add_argument("-n", type=int, default=20, help="last N commits (0 = all)")
    h.add_argument("--config", type=Path, help="config.yaml (to find the journal)")
    h.set_defaults(func=cmd_history)

    d = sub.add_parser("devices", help="list audio input devices (for audio.device in config.yaml)")
    d.set_defaults(func=cmd_devices)

    i = sub.add_parser("install-service", help="install and start the systemd user service (a launchd agent on macOS)")
    i.add_argument("--config", type=Path, help="config.yaml the service should use")
    i.add_argument("--no-enable", action="store_true", help="only write the unit file")
    i.set_defaults(func=cmd_install_service)

    o = sub.add_parser(
        "doctor",
        help="check this installation, model, audio, desktop and service: what works and what to fix",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    o.add_argument("--config", type=Path, help="config.yaml to check (default: ~/.config/qasr-live/config.yaml)")
    o.add_argument("--model", help="exported model directory (overrides model.dir)")
    o.add_argument("--device", help="input device by name (overrides audio.device)")
    o.add_argument("--json", action="store_true", help="the same checks as JSON, for programs")
    o.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Third-party libraries (onnxruntime's quantizer, llama.cpp) log chatty INFO lines to the root logger.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    _LOGGER.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        logging.getLogger("qasr_live.llama_cpp").setLevel(logging.ERROR)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except QasrError as e:
        print(f"qasr-live: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
