"""Typed configs: YAML files plus dotted ``key=value`` overrides, unknown keys rejected.

Every stage declares its config as a ``StrictConfig`` subclass whose fields are the YAML
keys and the CLI flags; each field's docstring is its ``--help`` text. Validation reports
every problem at once (torchtune's ConfigError does the same).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from enclave.errors import ConfigError

C = TypeVar("C", bound="StrictConfig")


class StrictConfig(BaseModel):
    """Base for every config: unknown keys are errors; docstrings are help texts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``train.lr=2e-4`` into (["train", "lr"], 0.0002); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("the command line", [f"override {text!r}: expected key=value, e.g. train.lr=2e-4"])
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a nested dict (a copy); later overrides win."""
    data = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return data


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_yaml(path: Path, expect: type = dict) -> dict | list:
    """Read a YAML mapping (or, with ``expect=list``, a list); any other top-level value is a config error."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if data is None:
        return expect()
    if not isinstance(data, expect):
        wanted = "a mapping of keys" if expect is dict else "a list"
        raise ConfigError(str(path), [f"expected {wanted} at the top, got {type(data).__name__}"])
    return data


# Keys whose values are never repeated in an error message: a mistyped secret must not reach a
# terminal, a log or a CI transcript.
SECRET_KEY = re.compile(r"token|secret|password|passphrase|credential|(^|\.)key$", re.IGNORECASE)


def format_errors(exc: ValidationError) -> list[str]:
    """One line per error: the dotted key as the user spells it, the value (never for secret keys), the reason."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (check the spelling; `--help` lists the keys)")
        elif err["type"] == "missing":
            lines.append(f"{key}: required, but not given")
        elif SECRET_KEY.search(key):
            lines.append(f"{key}: {err['msg']} (the value is not shown: this key may hold a secret)")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return lines


def load_config(cls: type[C], path: Path | None = None, overrides: list[str] = (), flags: dict | None = None) -> C:
    """Build a config from defaults, an optional YAML file, CLI flags and dotted overrides.

    Later sources win: file < flags < ``key=value`` overrides.

    Args:
        cls: the config class.
        path: a YAML file, or None.
        overrides: ``key=value`` strings (values parsed as YAML).
        flags: top-level values from ``--flag`` options, as typed (pydantic converts them).

    Raises:
        ConfigError: every invalid or unknown key at once.
    """
    data = read_yaml(path) if path is not None else {}
    data.update(flags or {})
    data = apply_overrides(data, list(overrides))
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        sources = [str(path)] if path else []
        sources += ["the command line"] if overrides or flags or not path else []
        raise ConfigError(" + ".join(sources), format_errors(exc)) from None


def add_config_flags(parser: argparse.ArgumentParser, cls: type[StrictConfig]) -> None:
    """Add ``--field-name`` flags for each top-level scalar field, help from its docstring.

    The parsed values are collected by ``flag_values``.
    """
    group = parser.add_argument_group(f"{cls.__name__} (also settable as key=value)")
    for name, field in cls.model_fields.items():
        if (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)) or get_origin(
            field.annotation
        ) is dict:
            continue  # nested: key=value overrides or the YAML file
        default = field.default
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
        if len(choices) == 1:
            continue  # a discriminator such as step: "prune"
        numeric = bool(choices) and all(isinstance(c, int) and not isinstance(c, bool) for c in choices)
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"cfg__{name}",
            metavar="V",
            default=None,
            type=int if numeric else None,  # Literal[2, 4, 8]: pydantic will not read "4" as 4
            action="append" if get_origin(field.annotation) is list else "store",  # --adapters a --adapters b
            help=(
                f"{field.description or ''} ({'required' if field.is_required() else f'default: {default!r}'})"
            ).replace("%", "%%"),
        )


def flag_values(args: argparse.Namespace) -> dict[str, str]:
    """``--max-new-tokens 8`` → ``{"max_new_tokens": "8"}`` for every flag the user set."""
    return {k[5:]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}


def describe(cls: type[StrictConfig], prefix: str = "") -> list[str]:
    """One line per leaf key: ``train.lr = 0.0002  Peak learning rate.`` (for --help epilogs)."""
    lines = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            lines += describe(field.annotation, key + ".")
        else:
            default = field.default if not isinstance(field.default, list) or field.default else "[]"
            text = " ".join((field.description or "").split())  # a docstring wrapped in the source: one line
            lines.append(f"  {key} = {default}\n      {text}")
    return lines
