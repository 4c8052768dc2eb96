"""YAML configuration files with inheritance, typed schemas and dotted command-line overrides.

Built on OmegaConf: files are merged with ``OmegaConf.merge``, overrides are applied with
``OmegaConf.update`` and, when a schema (a dataclass of :mod:`train.common.schema`) is given,
every value is type-checked by OmegaConf's structured configs and range-checked by
:func:`check_rules`. A config is handed to the training code as a plain nested ``dict``.

Files may inherit from others::

    # train/configs/pretrain/fima_r2plus1d_ucf101.yaml
    _base_: ../base_pretrain.yaml      # path relative to this file (a list is allowed too)
    model: {arch: r2plus1d_18}

Keys of the child are merged into the base recursively (mappings merge, every other value
replaces). Overrides given on the command line use dotted keys and YAML values::

    python -m train pretrain --config cfg.yaml optim.lr=0.01 data.root=/data/ucf101 model.arch=r3d_18

An override must name an existing key (so typos fail loudly, with a suggestion); prefix the
key with ``+`` to add a new one (``+model.kwargs.drop_rate=0.1``). With a schema, new keys can
only go into free-form mappings (such as ``model.kwargs``). Every error is one
:class:`ConfigError` naming the key and what it accepts, e.g.
``train.batch_size='abc' is not an integer (accepted: an integer >= 1)``.

Example:
    >>> cfg = resolve(PretrainConfig, [load_yaml("train/configs/smoke_fima.yaml")], ["optim.lr=0.1"])
    >>> cfg["optim"]["lr"]
    0.1
"""

from __future__ import annotations

import dataclasses
import difflib
import operator
import re
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from fima_models._utils import atomic_write_text

__all__ = [
    "ConfigError",
    "to_plain",
    "load_config",
    "load_yaml",
    "merge",
    "apply_overrides",
    "parse_override",
    "get",
    "resolve",
    "check_rules",
    "save_config",
    "dump_config",
]

BASE_KEY = "_base_"
_ABSENT = object()
#: Numeric bound rules of :func:`train.common.schema.rule` and their tests.
_BOUNDS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the fix."""


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


# --------------------------------------------------------------------------- files
def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML file into a dict, resolving its ``_base_`` chain.

    Args:
        path: YAML file.

    Returns:
        The merged configuration (without the ``_base_`` key).

    Raises:
        ConfigError: if the file is missing or unreadable, is not a YAML mapping, or the inheritance loops.
    """
    return _load_recursive(Path(path), ())


def _load_recursive(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.expanduser().resolve()
    if path in chain:
        loop = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config inheritance loops: {loop}; remove one of the `_base_` references")
    if not path.is_file():
        what = "is a folder, not a config file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {path} {what}; pass an existing YAML file to --config")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config {path} is not valid UTF-8 YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
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
    """Merge ``update`` into a copy of ``base``: mappings merge recursively, other values replace.

    Args:
        base: the defaults.
        update: values that win.

    Returns:
        A new dict; neither argument is modified.
    """
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = to_plain(value)
    return to_plain(out)


# --------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, Any, bool]:
    """Split ``key.sub=value`` into ``(dotted_key, parsed_value, allow_new)``.

    The value is parsed as YAML, so ``1e-3`` is a float, ``[1, 2]`` a list, ``null`` is None and
    ``true`` a bool; quote it to force a string (``name='"007"'``).

    Args:
        text: the override as typed.

    Returns:
        The dotted key, the parsed value, and whether the key may be new (``+`` prefix).

    Raises:
        ConfigError: if ``=`` or the key is missing, or the value is not YAML.
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
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({str(exc).splitlines()[0]}); quote it") from None
    return key, value, allow_new


def _apply(cfg: DictConfig, overrides: Iterable[str], schema: type | None) -> None:
    """Apply ``key=value`` overrides to ``cfg`` in place (type-checked when ``cfg`` is structured)."""
    for text in overrides:
        key, value, allow_new = parse_override(text)
        exists = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT
        if not exists and not allow_new:
            raise ConfigError(
                f"override key {key!r} does not exist{_suggest_key(cfg, key)}; prefix it with '+' (+{key}=...) "
                "to add a new key"
            )
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if parent and node is not None and not isinstance(node, DictConfig):
            raise ConfigError(f"cannot set {key!r}: {parent!r} is a value, not a mapping")
        if not exists and isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
            raise ConfigError(
                f"cannot add {key!r}: {parent or 'the top level'} has a fixed set of keys "
                f"({', '.join(map(str, node.keys()))}); '+' adds keys only inside free-form mappings such as "
                "model.kwargs"
            )
        try:
            OmegaConf.update(cfg, key, value, merge=False, force_add=allow_new and schema is None)
        except OmegaConfBaseException as exc:
            raise _translate(exc, schema, key, value) from None


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of a plain config dict with ``key=value`` overrides applied in order.

    Args:
        cfg: the configuration.
        overrides: strings like ``"optim.lr=0.01"`` or ``"+new.key=1"``.

    Returns:
        The new configuration.
    """
    conf = OmegaConf.create(to_plain(cfg))
    _apply(conf, overrides, None)
    return typing.cast(dict, OmegaConf.to_container(conf))


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Load a YAML config (with ``_base_`` inheritance) and apply dotted overrides, without a schema."""
    return apply_overrides(load_yaml(path), overrides)


def get(cfg: Mapping[str, Any], key: str, default: Any = ...) -> Any:
    """Look up a dotted key in a plain config dict.

    Raises:
        ConfigError: if the key is absent and no default was given.
    """
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not ...:
                return default
            raise ConfigError(f"config key {key!r} not found{_suggest_key(OmegaConf.create(to_plain(cfg)), key)}")
        node = node[part]
    return node


# --------------------------------------------------------------------------- schemas
def resolve(
    schema: type,
    layers: Sequence[Mapping[str, Any]],
    overrides: Iterable[str] = (),
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build and validate a configuration: the schema's defaults, then ``layers``, then overrides.

    Args:
        schema: dataclass of :mod:`train.common.schema` (types, defaults, rules in field metadata).
        layers: mappings merged in order (YAML files, flags, a caller's dict).
        overrides: ``key=value`` strings, applied last.
        check: rules across keys, called with the plain result.

    Returns:
        The configuration as a plain dict.

    Raises:
        ConfigError: one message naming the first wrong key: unknown, of the wrong type, missing,
            out of range, or breaking a cross-key rule.
    """
    conf = OmegaConf.structured(schema)
    for layer in layers:
        try:
            conf = typing.cast(DictConfig, OmegaConf.merge(conf, to_plain(layer)))
        except OmegaConfBaseException as exc:
            raise _translate(exc, schema) from None
    _apply(conf, overrides, schema)
    try:
        plain = typing.cast(dict, OmegaConf.to_container(conf, resolve=True, throw_on_missing=True))
    except OmegaConfBaseException as exc:
        raise _translate(exc, schema) from None
    check_rules(schema, plain)
    if check is not None:
        check(plain)
    return plain


def _field(schema: type | None, dotted: str) -> dataclasses.Field | None:
    """The schema field behind a dotted key, or None (free-form section or no schema)."""
    node = schema
    found = None
    for part in dotted.split("."):
        if node is None or not dataclasses.is_dataclass(node):
            return None
        found = {f.name: f for f in dataclasses.fields(node)}.get(part)
        if found is None:
            return None
        node = typing.get_type_hints(node).get(part)
    return found


def _accepted(schema: type | None, dotted: str) -> str:
    """What a key accepts, from its type and rules: ``an integer >= 1``, ``one of sgd, adamw`` ..."""
    field = _field(schema, dotted)
    if field is None or schema is None:
        return ""
    owner = schema
    for part in dotted.split(".")[:-1]:
        owner = typing.get_type_hints(owner)[part]
    hint = typing.get_type_hints(owner)[field.name]
    rules = field.metadata
    if "accepted" in rules:
        return str(rules["accepted"])
    if "choices" in rules:
        return "one of " + ", ".join(map(str, rules["choices"]))
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        typing.get_origin(base[0]) or base[0], "a list" if typing.get_origin(base[0]) is list else "a mapping")
    bounds = [f"{sym} {rules[k]}" for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in rules]
    optional = " or null" if type(None) in typing.get_args(hint) else ""
    return f"{kind}{' ' + ' and '.join(bounds) if bounds else ''}{optional}"


def _translate(exc: OmegaConfBaseException, schema: type | None, key: str | None = None, value: Any = _ABSENT) -> ConfigError:
    """One clear :class:`ConfigError` for an OmegaConf error (naming the key and what it accepts)."""
    full_key = str(getattr(exc, "full_key", None) or key or "?")
    field_key = re.sub(r"\[\d+\]$", "", full_key)
    if isinstance(exc, ConfigKeyError) or "not in" in str(getattr(exc, "msg", "")):
        parent, _, last = full_key.rpartition(".")
        hint = _suggest(last, _keys_at(schema, parent))
        return ConfigError(f"unknown config key {full_key!r} (no such key under {parent or 'the top level'}){hint}")
    if isinstance(exc, MissingMandatoryValue):
        return ConfigError(f"config key {full_key!r} has no value; set it (accepted: {_accepted(schema, field_key)})")
    if isinstance(exc, ValidationError):
        match = re.search(r"Value '(.*?)'", str(getattr(exc, "msg", "")))
        whole = value is not _ABSENT and field_key == full_key  # an item of a list names only itself
        shown = repr(value) if whole else (repr(match.group(1)) if match else "this value")
        accepted = _accepted(schema, field_key)
        return ConfigError(f"{full_key}={shown} is not valid" + (f" (accepted: {accepted})" if accepted else ""))
    return ConfigError(f"{full_key}: {str(getattr(exc, 'msg', exc)).splitlines()[0]}")


def _keys_at(schema: type | None, dotted: str) -> list[str]:
    node = schema
    for part in [p for p in dotted.split(".") if p]:
        if node is None or not dataclasses.is_dataclass(node):
            return []
        node = typing.get_type_hints(node).get(part)
    return [f.name for f in dataclasses.fields(node)] if node is not None and dataclasses.is_dataclass(node) else []


def check_rules(schema: type, values: Mapping[str, Any], prefix: str = "") -> None:
    """Check the range and choice rules in the schema's field metadata (see :func:`train.common.schema.rule`).

    Raises:
        ConfigError: naming the key, its value and the accepted values.
    """
    hints = typing.get_type_hints(schema)
    for spec in dataclasses.fields(schema):
        key = f"{prefix}{spec.name}"
        value = values.get(spec.name)
        kind = hints[spec.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, Mapping):
            check_rules(kind, value, f"{key}.")
            continue
        rules = spec.metadata
        if value is None or not rules:
            continue
        items = value if isinstance(value, list) else [value]
        if "each_ge" in rules and any(v < rules["each_ge"] for v in items):
            raise ConfigError(f"every item of {key} must be >= {rules['each_ge']}, got {value}")
        if "choices" in rules and value not in rules["choices"]:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, rules['choices']))}; got {value!r}")
        if "pattern" in rules and not re.fullmatch(rules["pattern"], str(value)):
            raise ConfigError(f"{key}={value!r} is not valid (accepted: {_accepted(schema, spec.name)})")
        if any(name in rules and not compare(value, rules[name]) for name, compare in _BOUNDS.items()):
            raise ConfigError(f"{key} must be {_accepted(schema, spec.name)}; got {value}")


# --------------------------------------------------------------------------- output
def dump_config(cfg: Mapping[str, Any]) -> str:
    """Render a configuration as YAML text (keys in insertion order)."""
    return yaml.safe_dump(to_plain(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Mapping[str, Any], path: str | Path) -> Path:
    """Write a configuration as YAML, atomically (see :func:`fima_models._utils.atomic_write`)."""
    return atomic_write_text(Path(path), dump_config(cfg))


def to_plain(value: Any) -> Any:
    """Convert OmegaConf nodes, Paths, tuples and numpy / torch scalars to YAML- and JSON-safe plain types."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _suggest_key(cfg: DictConfig, key: str) -> str:
    """`` (no 'x' under a.b); did you mean ...`` for a dotted key that is not in ``cfg``."""
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(parts[:i]) or "<top level>"
            options = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
            return f" (no {part!r} under {where}){_suggest(part, options)}"
        node = node[part]
    return ""


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=3)
    if close:
        return f"; did you mean {', '.join(repr(c) for c in close)}?"
    if options:
        return f"; available: {', '.join(options)}"
    return ""
