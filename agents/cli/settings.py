"""Run settings from a file and from ``--set``, for every long command (``prefs``, ``text``, ``sft``).

``--config run.json|run.yaml`` holds any of the command's run-config fields (the keys of ``PrefsConfig``,
``TextRLHFConfig`` or ``SFTRunConfig``, agent hyperparameters under ``extra`` / ``hyperparams``); flags given on the
command line override it, and ``--set key=value`` (repeatable; ``extra.ppo_epochs=2`` reaches into a nested dict;
values are read as JSON when they parse, else as text) overrides both. What was used is written to the run
directory's config.json, as for any run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from textenv.files import json_loads, read_text_file

__all__ = ["add_settings_flags", "json_argument", "merge", "read_instructions", "settings_from_args"]


class SettingsError(ValueError):
    """A config file or ``--set`` value that cannot be used (the message names it)."""


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("settings from a file")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="run settings as JSON or YAML: any field of the run config (flags override it)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_values",
                   help="override one setting (repeatable), e.g. --set extra.ppo_epochs=2 --set rm_epochs=4")
    g.add_argument("--instructions", default=None, metavar="TEXT|FILE",
                   help="what people labelling this run are asked to judge (shown on the labelling page); a file's "
                        "text, or the text itself")
    g.add_argument("--report-to", nargs="+", default=None, metavar="BACKEND",
                   help="where scalars go besides metrics.jsonl: tensorboard (default), trackio, wandb (offline unless "
                        "WANDB_MODE=online), none; several may be given")


def json_argument(raw: str) -> Any:
    """An argparse ``type``: ``raw`` read as JSON (a bad value is refused in one line naming the flag)."""
    try:
        return json_loads(raw)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {raw[:60]!r}") from None


def read_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not os.path.isfile(file):  # os.path: a name too long for the system is no file either
        raise SettingsError(f"--config {path}: no such file")
    try:
        text = read_text_file(file)
    except ValueError as err:
        raise SettingsError(f"--config {err}") from err
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json_loads(text)
    except Exception as err:  # noqa: BLE001 - json and yaml raise their own error types; both say where
        raise SettingsError(f"--config {path}: not valid {file.suffix[1:] or 'JSON'} ({err})") from err
    if not isinstance(values, dict):
        raise SettingsError(f"--config {path}: expected a mapping of setting names to values, got "
                            f"{type(values).__name__}")
    return values


def parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set rm_epochs=4")
        try:
            value = json_loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, last = key.strip().split(".")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise SettingsError(f"--set {item!r}: {name} is set to a value and to a nested key")
        node[last] = value
    return out


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``override``, nested dicts merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_instructions(value: str) -> str:
    """``--instructions TEXT|FILE``: a file's text (UTF-8), else the text itself."""
    if not os.path.isfile(value):  # long instructions are text: os.path, as a name too long is no file
        return value
    try:
        text = read_text_file(value)
    except ValueError as err:
        raise SettingsError(f"--instructions {err}") from err
    return text


def settings_from_args(args: argparse.Namespace, config_class: type, flags: Mapping[str, Any]) -> dict[str, Any]:
    """The run config's field values: ``--config`` file, then ``flags`` (the values given on the command line),
    then ``--set``; a key that is not a field of ``config_class`` is refused, naming the fields."""
    if getattr(args, "report_to", None):
        flags = {**flags, "report_to": list(args.report_to)}
    if getattr(args, "instructions", None):
        flags = {**flags, "instructions": read_instructions(args.instructions)}
    values = read_file(args.config) if getattr(args, "config", None) else {}
    values = merge(merge(values, flags), parse_sets(getattr(args, "set_values", []) or []))
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SettingsError(f"{', '.join(unknown)}: not a setting of {config_class.__name__}; its settings: "
                            f"{', '.join(sorted(names))}")
    hints = typing.get_type_hints(config_class)
    for name, value in values.items():
        if not _fits(value, hints.get(name, Any)):
            raise SettingsError(f"{name} takes {_describe(hints[name])}, got {type(value).__name__} "
                                f"{_clip(repr(value))}")
    return values


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (read from JSON or YAML, or given by a flag) has the type the field's annotation says, so
    that a config's checks see the kind of value they check: ``model=NaN`` or ``seed="0"`` would otherwise reach
    code that expects a path or a number (a TypeError traceback). Containers are checked one level deep."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, Mapping) and (not args or all(_fits(v, args[1]) for v in value.values()))
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    return True  # a type this check does not know: the config's own checks decide


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a text"}
    if hint in names:
        return names[hint]
    if origin is dict:
        return f"a mapping{f' of {_describe(args[1])} values' if args and args[1] is not Any else ''}"
    if origin in (list, tuple):
        return f"a list{f' of {_describe(args[0])} items' if args and args[0] is not Any else ''}"
    return str(hint)


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."
