"""YAML configuration files with inheritance and dotted command-line overrides.

A config is a plain nested ``dict``. Files may inherit from others::

    # train/configs/pretrain/fima_r2plus1d_ucf101.yaml
    _base_: ../base_pretrain.yaml      # path relative to this file (a list is allowed too)
    model: {arch: r2plus1d_18}

Keys of the child are merged into the base recursively (mappings merge, every other value
replaces). Overrides given on the command line use dotted keys and YAML values::

    python -m train pretrain --config cfg.yaml optim.lr=0.01 data.root=/data/ucf101 model.arch=r3d_18

An override must name an existing key (so typos fail loudly, with a suggestion); prefix the
key with ``+`` to add a new one (``+debug.flag=true``).

Example:
    >>> cfg = load_config("train/configs/smoke_fima.yaml", ["optim.lr=0.1"])
    >>> get(cfg, "optim.lr")
    0.1
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from train.common.checkpoint import atomic_write_text

__all__ = [
    "ConfigError",
    "load_config",
    "load_yaml",
    "merge",
    "apply_overrides",
    "parse_override",
    "get",
    "set_value",
    "save_config",
    "dump_config",
]

BASE_KEY = "_base_"


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-3`` (no dot) as a float, as Python does (YAML 1.1 would keep a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: Any) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the fix."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML file into a dict, resolving its ``_base_`` chain.

    Args:
        path: YAML file.

    Returns:
        The merged configuration (without the ``_base_`` key).

    Raises:
        ConfigError: if the file is missing, is not a mapping, or the inheritance loops.
    """
    return _load_recursive(Path(path), ())


def _load_recursive(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.expanduser().resolve()
    if path in chain:
        loop = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config inheritance loops: {loop}; remove one of the `_base_` references")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass an existing YAML file to --config")
    with path.open("r", encoding="utf-8") as fh:
        data = _yaml_load(fh)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must contain a YAML mapping at top level, found {type(data).__name__}")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, (str, Path)):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = merge(merged, _load_recursive(path.parent / str(base), (*chain, path)))
    return merge(merged, data)


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a deep copy of ``base``: mappings merge recursively, other values replace.

    Args:
        base: the defaults.
        update: values that win.

    Returns:
        A new dict; neither argument is modified.
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[str, Any, bool]:
    """Split ``key.sub=value`` into ``(dotted_key, parsed_value, allow_new)``.

    The value is parsed as YAML, so ``1e-3`` is a float, ``[1, 2]`` a list, ``null`` is None and
    ``true`` a bool; quote it to force a string (``name='"007"'``).

    Args:
        text: the override as typed.

    Returns:
        The dotted key, the parsed value, and whether the key may be new (``+`` prefix).

    Raises:
        ConfigError: if ``=`` or the key is missing.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} has no '='; write overrides as dotted.key=value, e.g. optim.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    allow_new = key.startswith("+")
    key = key.lstrip("+")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part; write e.g. optim.lr=0.01")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc}); quote it") from exc
    return key, value, allow_new


def get(cfg: Mapping[str, Any], key: str, default: Any = ...) -> Any:
    """Look up a dotted key.

    Args:
        cfg: configuration dict.
        key: dotted key such as ``"optim.lr"``.
        default: returned when the key is absent; when omitted a missing key raises.

    Returns:
        The value.

    Raises:
        ConfigError: if the key is absent and no default was given.
    """
    node: Any = cfg
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, Mapping) or part not in node:
            if default is not ...:
                return default
            where = ".".join(key.split(".")[:i]) or "<top level>"
            options = sorted(node.keys()) if isinstance(node, Mapping) else []
            hint = _suggest(part, options)
            raise ConfigError(f"config key {key!r} not found (no {part!r} under {where}){hint}")
        node = node[part]
    return node


def set_value(cfg: dict[str, Any], key: str, value: Any, allow_new: bool = True) -> None:
    """Set a dotted key in place.

    Args:
        cfg: configuration dict (modified).
        key: dotted key.
        value: new value.
        allow_new: when False, every part of the key must already exist.

    Raises:
        ConfigError: if ``allow_new`` is False and the key does not exist, or a parent is not a mapping.
    """
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part not in node:
            if not allow_new:
                where = ".".join(parts[:i]) or "<top level>"
                hint = _suggest(part, sorted(node.keys()))
                raise ConfigError(
                    f"override key {key!r} does not exist (no {part!r} under {where}){hint}; "
                    f"prefix it with '+' (+{key}=...) to add a new key"
                )
            if not last:
                node[part] = {}
        if last:
            node[part] = value
        else:
            if not isinstance(node[part], dict):
                raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[: i + 1])!r} is a value, not a mapping")
            node = node[part]


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied in order.

    Args:
        cfg: the configuration.
        overrides: strings like ``"optim.lr=0.01"`` or ``"+new.key=1"``.

    Returns:
        The new configuration.
    """
    out = copy.deepcopy(dict(cfg))
    for text in overrides:
        key, value, allow_new = parse_override(text)
        set_value(out, key, value, allow_new=allow_new)
    return out


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Load a YAML config (with ``_base_`` inheritance) and apply dotted overrides.

    Args:
        path: YAML file.
        overrides: ``key=value`` strings.

    Returns:
        The configuration dict.
    """
    return apply_overrides(load_yaml(path), overrides)


def dump_config(cfg: Mapping[str, Any]) -> str:
    """Render a configuration as YAML text (keys in insertion order)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Mapping[str, Any], path: str | Path) -> Path:
    """Write a configuration as YAML, atomically.

    Args:
        cfg: configuration.
        path: destination file.

    Returns:
        The path written.
    """
    return atomic_write_text(Path(path), dump_config(cfg))


def _plain(value: Any) -> Any:
    """Convert Paths/tuples to YAML-safe plain types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3)
    if close:
        return f"; did you mean {', '.join(repr(c) for c in close)}?"
    if options:
        return f"; available: {', '.join(options)}"
    return ""
