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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["add_settings_flags", "merge", "settings_from_args"]


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


def read_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise SettingsError(f"--config {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"--config {path}: cannot be read as UTF-8 text ({err})") from err
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
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
            value = json.loads(raw)
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


def settings_from_args(args: argparse.Namespace, config_class: type, flags: Mapping[str, Any]) -> dict[str, Any]:
    """The run config's field values: ``--config`` file, then ``flags`` (the values given on the command line),
    then ``--set``; a key that is not a field of ``config_class`` is refused, naming the fields."""
    if getattr(args, "report_to", None):
        flags = {**flags, "report_to": list(args.report_to)}
    if getattr(args, "instructions", None):
        value = args.instructions
        flags = {**flags, "instructions": Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value}
    values = read_file(args.config) if getattr(args, "config", None) else {}
    values = merge(merge(values, flags), parse_sets(getattr(args, "set_values", []) or []))
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SettingsError(f"{', '.join(unknown)}: not a setting of {config_class.__name__}; its settings: "
                            f"{', '.join(sorted(names))}")
    return values
