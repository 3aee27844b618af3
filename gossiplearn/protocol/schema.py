"""Tiny declarative validators for decoded msgpack values.

A :class:`Record` checks a map has exactly its keys, each value of the right type and size,
and returns the values in the record's fixed key order: that order is the canonical encoding.
Types are checked exactly (``type(x) is int``), so ``True`` is not an int and a str is not bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gossiplearn.protocol.errors import SchemaViolation

Check = Callable[[Any, str], Any]

UINT64_MAX = (1 << 64) - 1


def uint(maximum: int = UINT64_MAX, minimum: int = 0) -> Check:
    def check(value: Any, where: str) -> int:
        if type(value) is not int:
            raise SchemaViolation(f"{where}: expected an unsigned int, got {type(value).__name__}")
        if not minimum <= value <= maximum:
            raise SchemaViolation(f"{where}: {value} outside [{minimum}, {maximum}]")
        return value

    return check


def binary(
    size: int | None = None, max_size: int | None = None, sizes: Iterable[int] = ()
) -> Check:
    allowed = frozenset(sizes)

    def check(value: Any, where: str) -> bytes:
        if type(value) is not bytes:
            raise SchemaViolation(f"{where}: expected bytes, got {type(value).__name__}")
        n = len(value)
        if size is not None and n != size:
            raise SchemaViolation(f"{where}: expected {size} bytes, got {n}")
        if max_size is not None and n > max_size:
            raise SchemaViolation(f"{where}: {n} bytes exceeds {max_size}")
        if allowed and n not in allowed:
            raise SchemaViolation(f"{where}: {n} bytes, expected one of {sorted(allowed)}")
        return value

    return check


def text(max_len: int, choices: Iterable[str] = ()) -> Check:
    allowed = frozenset(choices)

    def check(value: Any, where: str) -> str:
        if type(value) is not str:
            raise SchemaViolation(f"{where}: expected a string, got {type(value).__name__}")
        if len(value) > max_len:
            raise SchemaViolation(f"{where}: string longer than {max_len}")
        if allowed and value not in allowed:
            raise SchemaViolation(f"{where}: {value[:32]!r} is not one of {sorted(allowed)}")
        return value

    return check


def array(item: Check, max_len: int, min_len: int = 0) -> Check:
    def check(value: Any, where: str) -> tuple[Any, ...]:
        if type(value) is not list:
            raise SchemaViolation(f"{where}: expected a list, got {type(value).__name__}")
        if not min_len <= len(value) <= max_len:
            raise SchemaViolation(f"{where}: {len(value)} items, expected {min_len}..{max_len}")
        try:
            # Each element's place is only named if one fails (formatting it for every
            # element of every frame cost more than the checks).
            return tuple([item(element, where) for element in value])
        except SchemaViolation:
            # The checks are pure: the same element fails again, now with its place.
            return tuple(item(element, f"{where}[{i}]") for i, element in enumerate(value))

    return check


@dataclass(frozen=True)
class Record:
    """A map with a fixed, ordered set of string keys."""

    name: str
    fields: tuple[tuple[str, Check], ...]

    def validate(self, value: Any, where: str | None = None) -> dict[str, Any]:
        where = where or self.name
        if type(value) is not dict:
            raise SchemaViolation(f"{where}: expected a map, got {type(value).__name__}")
        if len(value) != len(self.fields) or any(key not in value for key, _ in self.fields):
            expected = [key for key, _ in self.fields]
            got = [repr(k)[:32] for k in list(value)[: len(self.fields) + 2]]
            raise SchemaViolation(f"{where}: keys {got} do not match {expected}")
        try:
            # Each field's place is only named if one fails (as in array).
            return {key: check(value[key], where) for key, check in self.fields}
        except SchemaViolation:
            return {key: check(value[key], f"{where}.{key}") for key, check in self.fields}

    def __call__(self, value: Any, where: str) -> dict[str, Any]:
        return self.validate(value, where)
