"""What each config field allows, declared beside it in tree.py (``positive(256)``, ``unit(0.5)``,
``choice("paper", AUGMENTS)``...), and the check every config dataclass runs when it is built.

The check runs in ``__post_init__``, so every way of building a config (YAML, dotted overrides, a Flower run
config, a Tune trial, a checkpoint's stored config, ``dataclasses.replace``) meets it once. Types are
coerced before (io.py); here: ranges, finiteness (no float field takes NaN or inf), choices, and the
constraints between fields that each dataclass states in ``check_together``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A config value its key does not allow: a user's mistake, reported in one line naming the key."""


@dataclass(frozen=True)
class Rule:
    """What one field (each entry, for a tuple field) allows; None values pass (the type decides on None)."""

    kind: str  # "number" | "choice" | "text"
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    nonempty: bool = False
    contains: str = ""

    def allows(self, value: Any) -> bool:
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "text":
            return isinstance(value, str) and (not self.nonempty or bool(value.strip())) and self.contains in value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self, integer: bool) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(repr, self.choices))
        if self.kind == "text":
            what = "a non-empty string" if self.nonempty else "a string"
            return what + (f" containing {self.contains!r}" if self.contains else "")
        what = "an integer" if integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            if integer and self.lo_open:
                return f"{what} >= {math.floor(self.lo) + 1}"
            return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {self.hi:g}"
        return what


def _declared(default: Any, rule: Rule) -> Any:
    return field(default=default, metadata={"rule": rule})


def positive(default: Any) -> Any:
    """An integer >= 1 or a number > 0 (each entry of a tuple)."""
    return _declared(default, Rule("number", lo=0, lo_open=True))


def at_least(lo: float, default: Any) -> Any:
    return _declared(default, Rule("number", lo=lo))


def between(lo: float, hi: float, default: Any, *, lo_open: bool = False, hi_open: bool = False) -> Any:
    return _declared(default, Rule("number", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open))


def unit(default: Any) -> Any:
    """A probability or fraction: a number in [0, 1]."""
    return between(0.0, 1.0, default)


def choice(default: Any, options: tuple[str, ...]) -> Any:
    assert default is None or default in options, (default, options)
    return _declared(default, Rule("choice", choices=tuple(options)))


def text(default: Any = None, *, nonempty: bool = False, contains: str = "") -> Any:
    """A free string (a path, a name, a pattern): only its type, emptiness and a required part are checked."""
    return _declared(default, Rule("text", nonempty=nonempty, contains=contains))


@functools.cache
def _integer_fields(cls: type) -> frozenset[str]:
    """The fields annotated int, int | None or tuple[int, ...]."""
    out = set()
    for name, tp in typing.get_type_hints(cls).items():
        args = typing.get_args(tp) or (tp,)
        if int in args or any(int in typing.get_args(a) for a in args):
            out.add(name)
    return frozenset(out)


def check_value(key: str, value: Any, rule: Rule | None, integer: bool) -> None:
    """Raise a ConfigError naming the key, the value and what is allowed; tuples entry by entry."""
    if value is None or dataclasses.is_dataclass(value) or isinstance(value, bool):
        return
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            check_value(f"{key}[{i}]", v, rule, integer)
        return
    bad_float = isinstance(value, float) and not math.isfinite(value)
    if bad_float or (rule is not None and not rule.allows(value)):
        allowed = rule.describe(integer) if rule is not None else "a finite number"
        raise ConfigError(f"config key '{key}' must be {allowed}, got {value!r}")


class Checked:
    """Base of the config dataclasses: each field is checked against its rule when an instance is built,
    then ``check_together`` (constraints between fields). ``KEY`` is the section's dotted place in the tree."""

    KEY: ClassVar[str] = ""

    def key(self, name: str) -> str:
        return f"{self.KEY}.{name}" if self.KEY else name

    def __post_init__(self) -> None:
        integer = _integer_fields(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check_value(self.key(f.name), getattr(self, f.name), f.metadata.get("rule"), f.name in integer)
        self.check_together()

    def check_together(self) -> None:
        """Constraints between this section's fields (a ConfigError naming the keys); none by default."""
