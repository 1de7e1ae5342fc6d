"""Reading ``config.yaml``: find the file, parse its YAML with line numbers, validate every value against the
schema of :mod:`qasr_live.config`, and apply command-line overrides the same way.

Entry points:

* :func:`load_config` finds the file (explicit path, else ``$XDG_CONFIG_HOME/qasr-live/config.yaml``, else the
  built-in defaults) and parses it;
* :func:`parse_config` parses YAML text (used by tests and by :func:`load_config`);
* :func:`with_overrides` replaces a few dotted keys (the command line's ``--language`` and friends), validated
  the same way.

Every mistake raises :class:`~qasr_live.errors.ConfigError` naming the file and 1-based line (or the option), the
dotted key, what is wrong and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from qasr_live import schema
from qasr_live.config import AppConfig, Spec, check_value, section_keys, sections
from qasr_live.errors import ConfigError

__all__ = ["default_config_path", "load_config", "parse_config", "with_overrides"]


def _fail(where: str, dotted: str, problem: str, spec: Spec | None = None) -> ConfigError:
    suffix = f" ({spec.help})" if spec is not None else ""
    return ConfigError(f"{where}: {dotted}: {problem}{suffix}")


def _unknown(kind: str, name: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid {kind}s are: {', '.join(valid)}"
    return f"unknown {kind}; {hint}"


# --- YAML -----------------------------------------------------------------------------------------


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _construct(node: yaml.Node) -> Any:
    """The Python value of a composed node, with the safe loader's rules."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _mapping_items(
    node: yaml.MappingNode, source: str, dotted_prefix: str
) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
    """(key, key node, value node) of a mapping node; rejects non-string and duplicate keys."""
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        where = f"{source}:{_line(key_node)}"
        if not isinstance(key_node, yaml.ScalarNode):
            raise ConfigError(f"{where}: {dotted_prefix}<{_node_kind(key_node)}>: keys must be plain names")
        key = _construct(key_node)
        if not isinstance(key, str):
            raise ConfigError(f"{where}: {dotted_prefix}{schema.show(key)}: keys must be plain names")
        if key in seen:
            raise ConfigError(f"{where}: {dotted_prefix}{key}: duplicate key (first set on line {seen[key]})")
        seen[key] = _line(key_node)
        yield key, key_node, value_node


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def parse_config(text: str, source: str) -> AppConfig:
    """Parse and validate YAML ``text``; ``source`` names it in error messages (usually the file path).

    An empty document, or a section set to null, means the defaults. Raises :class:`ConfigError`.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    if root is None or _is_null(root):
        return AppConfig()
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"{source}:{_line(root)}: the top level must be a mapping of sections "
            f"({', '.join(sections())}), got {_node_kind(root)}"
        )
    known = sections()
    built: dict[str, Any] = {}
    try:
        for name, key_node, value_node in _mapping_items(root, source, ""):
            if name not in known:
                raise ConfigError(f"{source}:{_line(key_node)}: {name}: {_unknown('section', name, list(known))}")
            built[name] = _parse_section(name, known[name], value_node, source)
    except yaml.YAMLError as exc:  # a bad tag or the like, found while constructing a value
        raise _yaml_error(exc, source, "unsupported YAML value") from None
    return AppConfig(**built)


def _parse_section(name: str, cls: type, node: yaml.Node, source: str) -> Any:
    if _is_null(node):
        return cls()
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            f"{source}:{_line(node)}: {name}: the section must be a mapping of keys, got {_node_kind(node)}"
        )
    keys = section_keys(cls)
    values: dict[str, Any] = {}
    for key, key_node, value_node in _mapping_items(node, source, f"{name}."):
        dotted = f"{name}.{key}"
        if key not in keys:
            raise ConfigError(f"{source}:{_line(key_node)}: {dotted}: {_unknown('key', key, list(keys))}")
        annotation, spec = keys[key]
        value, problem = check_value(_construct(value_node), annotation, spec)
        if problem is not None:
            raise _fail(f"{source}:{_line(value_node)}", dotted, problem, spec)
        values[key] = value
    try:
        return cls(**values)
    except ConfigError as exc:  # a rule across keys (each key alone passed above): point at the section
        raise ConfigError(f"{source}:{_line(node)}: {exc}") from None


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return schema.describe(_construct(node))


def _yaml_error(exc: yaml.YAMLError, source: str, what: str = "YAML syntax error") -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return ConfigError(f"{where}: {what}: {detail}")


# --- loading --------------------------------------------------------------------------------------


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/qasr-live/config.yaml``; ``~/.config`` stands in when the variable is unset or
    not an absolute path."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "qasr-live" / "config.yaml"


def load_config(path: str | Path | None = None) -> AppConfig:
    """Load the configuration.

    Search order: the explicit ``path`` (which must exist), else :func:`default_config_path` if it exists,
    else the built-in defaults (``AppConfig()``). Raises :class:`ConfigError` for a missing explicit file, an
    unreadable file or invalid content.
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            what = "is not a file" if file.exists() else "does not exist"
            raise ConfigError(f"{file}: config file {what}; pass an existing config.yaml or omit the option")
    else:
        file = default_config_path()
        if not file.is_file():
            return AppConfig()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc}") from None
    return parse_config(text, str(file))


def with_overrides(
    cfg: AppConfig, overrides: Mapping[str, Any], *, sources: Mapping[str, str] | None = None
) -> AppConfig:
    """A copy of ``cfg`` with dotted keys replaced, e.g. ``{"recognition.language": "english"}``.

    Values are validated and normalised exactly as in config.yaml. Pass only the options the user actually
    gave: a ``None`` value sets the key to null (allowed only where null is). ``sources`` maps a dotted key to
    the name used in error messages (the command-line option, e.g. ``"--language"``); it defaults to
    ``"override"``. Raises :class:`ConfigError`.
    """
    known = sections()
    changes: dict[str, dict[str, Any]] = {}
    for dotted, raw in overrides.items():
        where = (sources or {}).get(dotted, "override")
        name, _, key = dotted.partition(".")
        if name not in known:
            raise ConfigError(f"{where}: {dotted}: {_unknown('section', name, list(known))}")
        keys = section_keys(known[name])
        if key not in keys:
            raise ConfigError(f"{where}: {dotted}: {_unknown('key', key, list(keys))}")
        annotation, spec = keys[key]
        value, problem = check_value(raw, annotation, spec)
        if problem is not None:
            raise _fail(where, dotted, problem, spec)
        changes.setdefault(name, {})[key] = value
    replaced: dict[str, Any] = {}
    for name, kv in changes.items():
        try:
            replaced[name] = dataclasses.replace(getattr(cfg, name), **kv)
        except ConfigError as exc:  # a rule across keys of the section, broken by these overrides
            origin = ", ".join(dict.fromkeys((sources or {}).get(f"{name}.{key}", "override") for key in kv))
            raise ConfigError(f"{origin}: {exc}") from None
    return dataclasses.replace(cfg, **replaced)
