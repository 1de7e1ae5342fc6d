"""Read a checkpoint's byte-level BPE tokenizer without transformers.

Either `tokenizer.json` (the fast tokenizer's own file) or the slow tokenizer's three files: `vocab.json` (token ->
id), `merges.txt` (one merge per line, best first) and `tokenizer_config.json`, whose `added_tokens_decoder`
holds the special and added tokens at their ids. Both give the description in tokenizer.json's shape
(`{"model": {"vocab", "merges"}, "added_tokens": [...]}`), the same one transformers' fast tokenizer serializes,
so `decoder_gguf.tokenizer_vocab` turns either into the GGUF vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qasr_live.errors import ExportError

TOKENIZER_JSON = "tokenizer.json"
SLOW_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ExportError(f"{path} cannot be read ({e.strerror or e}); check its permissions.") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e}); download the checkpoint's tokenizer files again.") from e


def _bad(path: Path, what: str) -> ExportError:
    return ExportError(f"{path} {what}; download the checkpoint's tokenizer files again.")


def read_tokenizer(src: Path) -> dict[str, Any]:
    """The tokenizer description of the checkpoint directory `src` (tokenizer.json when present)."""
    if (src / TOKENIZER_JSON).is_file():
        description = _from_tokenizer_json(src / TOKENIZER_JSON)
    elif all((src / name).is_file() for name in SLOW_FILES):
        description = _from_slow_files(src)
    else:
        raise ExportError(
            f"{src} has no tokenizer: the checkpoint needs tokenizer.json or vocab.json + merges.txt + "
            "tokenizer_config.json, as on Hugging Face; download them again."
        )
    # transformers also adds the tokens of tokenizer_config.json that tokenizer.json lacks
    config_path = src / "tokenizer_config.json"
    if config_path.is_file():
        _add_declared_tokens(description, config_path)
    return description


def _from_tokenizer_json(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise _bad(path, "has no `model.vocab`")
    if model.get("type", "BPE") != "BPE":
        raise ExportError(f"{path} describes a {model.get('type')} tokenizer; Qwen3-ASR uses byte-level BPE.")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    added = [
        {"id": int(t["id"]), "content": str(t["content"]), "special": bool(t.get("special", False))}
        for t in data.get("added_tokens") or []
    ]
    return {"model": {"type": "BPE", "vocab": dict(model["vocab"]), "merges": merges}, "added_tokens": added}


def _from_slow_files(src: Path) -> dict[str, Any]:
    vocab_path, merges_path = src / "vocab.json", src / "merges.txt"
    vocab = _read_json(vocab_path)
    if not isinstance(vocab, dict):
        raise _bad(vocab_path, "is not a JSON object of token -> id")
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ExportError(f"{merges_path} cannot be read ({e.strerror or e}); check its permissions.") from e
    except UnicodeDecodeError as e:
        raise _bad(merges_path, f"is not UTF-8 ({e})") from e
    # As the slow tokenizer reads it: skip the `#version` line and blank lines, split on white space; a repeated
    # merge keeps its first place (transformers builds a dict of the pairs, whose keys keep insertion order).
    merges: dict[tuple[str, ...], None] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#version"):
            continue
        pair = tuple(line.split())
        if len(pair) != 2:
            raise _bad(merges_path, f"line {number} is not one merge of two parts")
        merges.setdefault(pair)
    return {
        "model": {
            "type": "BPE",
            "vocab": {str(k): int(v) for k, v in vocab.items()},
            "merges": list(map(" ".join, merges)),
        },
        "added_tokens": [],
    }


def _add_declared_tokens(description: dict[str, Any], config_path: Path) -> None:
    config = _read_json(config_path)
    declared = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    if declared is None:
        return
    if not isinstance(declared, dict):
        raise _bad(config_path, "has an `added_tokens_decoder` that is not a JSON object")
    added: list[dict[str, Any]] = description["added_tokens"]
    have_ids = {t["id"] for t in added}
    have_content = {t["content"]: t["id"] for t in added}
    try:
        entries = sorted((int(k), v) for k, v in declared.items())
        for idx, token in entries:
            content = str(token["content"])
            if idx in have_ids and have_content.get(content) == idx:
                continue
            if idx in have_ids or content in have_content:
                raise _bad(config_path, f"gives {content!r} id {idx}, which another added token already has")
            added.append({"id": idx, "content": content, "special": bool(token.get("special", False))})
            have_ids.add(idx)
            have_content[content] = idx
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _bad(config_path, f"has a malformed `added_tokens_decoder` ({e})") from e
    added.sort(key=lambda t: t["id"])
