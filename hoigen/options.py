"""Typed options, declared once: each stage's frozen dataclass names its fields with :func:`option`.

A field's metadata carries its help text and its checks (range, choices), so one declaration serves
the stage code (which receives the typed object), the CLI (``hoigen.cli`` generates one flag per
field, ``--help`` text and default included) and recipes (``hoigen.recipe`` builds the same object
from a YAML section). :func:`validate` checks types and ranges; a bad value raises
:class:`OptionError` (one line, exit 2), which names the CLI flag, or in a recipe the file and key.
Adding an option is adding one field.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from hoigen.errors import HoigenError

META_KEY = "hoigen"
# Image sizes, in one place: the tiny offline stand-in works at 64 px, Stable Diffusion 1.5 (and the
# random render camera) at 512 px.
TINY_SIZE = 64
REAL_SIZE = 512
MAX_SIZE = 8192  # the largest render side an option accepts (larger ones exhaust GL framebuffers and memory)
MAX_SYNTH_SIZE = 2048  # the largest diffusion image side (4x SD 1.5's; at 8192 the tiny stand-in alone needs >100 GB)


class OptionError(HoigenError):
    """A usage error in one option: ``name`` (the field) and ``problem`` (e.g. "must be at least 1, got 0").

    Printed as ``--flag problem`` for the CLI and the API; a recipe rewrites it as ``FILE [section]: key problem``.
    """

    exit_code = 2

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{flag_of(name)} {self.problem}")


class UsageError(HoigenError):
    """A usage error that is not one option's (a recipe that is not a mapping, an unknown key): exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class OptionSpec:
    """What :func:`option` records in a field's metadata."""

    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # the CLI flag; default --field-name (bool: --x/--no-x)
    short: str | None = None  # e.g. -q
    envvar: str | None = None
    default_text: str | None = None  # what --help shows as the default when the value itself would mislead
    cli: bool = True  # False: recipes (and the API) only
    split: str | None = None  # list options: a given string is split on this (e.g. "mug,bowl")
    pair: bool = True  # bool options: --x/--no-x (False: a plain --x flag)


def option(
    default: Any,
    help: str,  # noqa: A002
    *,
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    short: str | None = None,
    envvar: str | None = None,
    default_text: str | None = None,
    cli: bool = True,
    split: str | None = None,
    pair: bool = True,
) -> Any:
    """One option: a dataclass field with its default, help text and checks (see :class:`OptionSpec`)."""
    spec = OptionSpec(help, min, max, tuple(choices) if choices else None, flag, short, envvar, default_text, cli,
                      split, pair)  # fmt: skip
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={META_KEY: spec})
    return field(default=default, metadata={META_KEY: spec})


def spec_of(f: dataclasses.Field) -> OptionSpec:
    return f.metadata.get(META_KEY) or OptionSpec(help="")


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class FieldType:
    """A field's type reduced to what options use: ``base`` (int, float, str, bool, Path), list or not, optional."""

    base: type
    is_list: bool
    optional: bool


@cache
def field_types(cls: type) -> dict[str, FieldType]:
    """Each field's :class:`FieldType`, from the class's (possibly string) annotations."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            if len(args) != 1:
                raise TypeError(f"{cls.__name__}.{f.name}: options take one type (or it | None)")
            hint = args[0]
        is_list = typing.get_origin(hint) is list
        base = typing.get_args(hint)[0] if is_list else hint
        if base not in (int, float, str, bool, Path):
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {hint!r}")
        out[f.name] = FieldType(base, is_list, optional)
    return out


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}


def coerce(value: Any, kind: type, name: str) -> Any:
    """``value`` as ``kind`` where that loses nothing (3 -> 3.0, "a" -> Path("a")), else an OptionError."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a YAML `anchor: 3`
    elif kind is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
    raise OptionError(name, f"must be {_NAMES[kind]}, got {value!r}")


def _check_value(value: Any, spec: OptionSpec, name: str) -> None:
    if spec.choices is not None and value not in spec.choices:
        raise OptionError(name, f"must be one of {', '.join(spec.choices)}, got {value!r}")
    low, high = spec.min, spec.max
    if low is not None and high is not None and not low <= value <= high:
        raise OptionError(name, f"must be in {_num(low)}..{_num(high)}, got {value}")
    if low is not None and value < low:
        raise OptionError(name, f"must be at least {_num(low)}, got {value}")
    if high is not None and value > high:
        raise OptionError(name, f"must be at most {_num(high)}, got {value}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def validate(options: Any) -> None:
    """Coerce and check every field of a (frozen) options object in place: types, ranges, choices."""
    types_ = field_types(type(options))
    for f in fields(options):
        value, kind, spec = getattr(options, f.name), types_[f.name], spec_of(f)
        if value is None:
            if not kind.optional:
                raise OptionError(f.name, "must be given (it has no empty value)")
            continue
        if kind.is_list:
            if isinstance(value, str):  # one value (a recipe's `controlnet: DIR`, or "mug,bowl" split below)
                value = [value]
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise OptionError(f.name, f"must be a list of {_NAMES[kind.base].split(' ', 1)[-1]}s, got {value!r}")
            if spec.split:  # "mug,bowl" (a recipe string, or one --categories value) is two items
                value = [p.strip() for v in value for p in (v.split(spec.split) if isinstance(v, str) else [v])]
                value = [v for v in value if v != ""]
            value = [coerce(v, kind.base, f.name) for v in value]
            for v in value:
                _check_value(v, spec, f.name)
        else:
            value = coerce(value, kind.base, f.name)
            _check_value(value, spec, f.name)
        object.__setattr__(options, f.name, value)


def build(cls: type, values: Mapping[str, Any], where: str = "options") -> Any:
    """``cls(**values)`` with unknown keys rejected (closest valid key suggested)."""
    check_keys(values, [f.name for f in fields(cls)], where)
    return cls(**values)


def check_keys(given: Mapping[str, Any], valid: list[str], where: str = "options") -> None:
    """Reject a key not in ``valid``, naming the closest valid one."""
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise UsageError(f"{where}: unknown key '{key}'{hint}")


def record(options: Any) -> dict[str, Any]:
    """Options as a JSON-able dict (paths as strings) for ``run.json`` and run fingerprints."""
    out: dict[str, Any] = {}
    for f in fields(options):
        value = getattr(options, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[f.name] = value
    return out


def default_text(f: dataclasses.Field) -> str | None:
    """The default as ``--help`` shows it (None: nothing to show)."""
    spec = spec_of(f)
    if spec.default_text is not None:
        return spec.default_text or None
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if default is None:
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default)


@dataclass(frozen=True)
class Common:
    """What every stage run takes besides its options: the seed, local workers, the rank split, quietness."""

    seed: int = option(0, "Run seed; every sample's seed derives from it and the sample key.", min=0, max=2**63 - 1)
    workers: int = option(1, "Local worker processes (shards are split between them).", min=1, max=1024)
    shard_index: int | None = option(None, "This process's rank (default: RANK or SLURM_ARRAY_TASK_ID).", min=0)
    num_shards: int | None = option(
        None, "Number of ranks (default: WORLD_SIZE or SLURM_ARRAY_TASK_COUNT).", min=1
    )  # fmt: skip
    quiet: bool = option(False, "No progress bars or status lines.", short="-q", pair=False, default_text="")
    overwrite: bool = option(
        False, "When --out holds another run of this stage (other options or input), remove that run's files "
        "and start afresh (default: refuse).", pair=False, default_text="",
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)
