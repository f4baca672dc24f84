"""Check untrusted input against a Record's declaration: presence, type, range, length."""
from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Mapping, Type

import faust

from schemas.records import ChoiceField, IdField

__all__ = ["FieldError", "field_errors", "range_errors"]


@dataclass(frozen=True)
class FieldError:
    """One reason one field of one item is unacceptable."""

    field: str
    reason: str


def _base_type(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def _type_reason(expected: Any, value: Any) -> str | None:
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if not math.isfinite(value):
            return "must be finite"
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
    elif expected is str and not isinstance(value, str):
        return "must be a string"
    return None


@dataclass(frozen=True)
class _FieldPlan:
    """One field's checks, read off its annotation and descriptor."""

    name: str  # as the caller spells it
    expected: Any
    required: bool
    lo: Any = None
    hi: Any = None
    min_len: int | None = None
    max_len: int | None = None
    choices: tuple[str, ...] | None = None
    pattern: re.Pattern[str] | None = None

    def constraint_reasons(self, value: Any) -> Iterator[str]:
        if self.lo is not None and value < self.lo:
            yield f"must be >= {self.lo}"
        if self.hi is not None and value > self.hi:
            yield f"must be <= {self.hi}"
        if self.min_len is not None and len(value) < self.min_len:
            yield "must not be empty" if self.min_len == 1 else f"must have at least {self.min_len} characters"
        elif self.max_len is not None and len(value) > self.max_len:
            yield f"must have at most {self.max_len} characters"
        elif self.pattern is not None and not self.pattern.fullmatch(value):
            yield "may only contain letters, digits, '_', '.' and '-'"
        if self.choices is not None and value not in self.choices:
            yield f"must be one of {', '.join(self.choices)}"


@lru_cache(maxsize=None)
def _plan(record: Type[faust.Record], skip: frozenset[str], names: tuple[tuple[str, str], ...]) -> tuple[_FieldPlan, ...]:
    """What to check per field, read off the declaration once (typing introspection is slow)."""
    renamed = dict(names)
    plans = []
    for field, annotation in record._options.fields.items():
        if field in skip:
            continue
        expected, optional = _base_type(annotation)
        required = not optional and field not in record._options.defaults
        d = record._options.descriptors.get(field)
        plans.append(_FieldPlan(
            renamed.get(field, field), expected, required,
            lo=getattr(d, "min_value", None), hi=getattr(d, "max_value", None),
            min_len=getattr(d, "min_length", None), max_len=getattr(d, "max_length", None),
            choices=d.choices if isinstance(d, ChoiceField) else None,
            pattern=re.compile(d.pattern) if isinstance(d, IdField) else None,
        ))
    return tuple(plans)


@lru_cache(maxsize=None)
def _known(plans: tuple[_FieldPlan, ...]) -> frozenset[str]:
    return frozenset(p.name for p in plans)


def field_errors(
    record: Type[faust.Record],
    data: Any,
    *,
    skip: frozenset[str] = frozenset(),
    names: Mapping[str, str] | None = None,
) -> list[FieldError]:
    """Every problem with `data` as a `record`; `names` maps record fields to the caller's names."""
    if not isinstance(data, dict):
        return [FieldError("", "must be a JSON object")]
    # mypy checks type[Record] against Hashable through Record.__hash__ (an instance method).
    plans = _plan(record, skip, tuple(sorted((names or {}).items())))  # type: ignore[arg-type]
    known = _known(plans)
    errors = [FieldError(k, "unknown field") for k in data if k not in known]
    for plan in plans:
        value = data.get(plan.name)
        if value is None:
            if plan.required:
                errors.append(FieldError(plan.name, "is required"))
            continue
        reason = _type_reason(plan.expected, value)
        if reason:
            errors.append(FieldError(plan.name, reason))
            continue
        errors.extend(FieldError(plan.name, r) for r in plan.constraint_reasons(value))
    return errors


def range_errors(record: Type[faust.Record], data: Mapping[str, Any]) -> list[FieldError]:
    """Constraint problems of `data` whose types its Avro decoding already guarantees."""
    errors = []
    for plan in _plan(record, frozenset(), ()):  # type: ignore[arg-type]  # as in field_errors
        value = data.get(plan.name)
        if value is None:
            if plan.required:
                errors.append(FieldError(plan.name, "is required"))
        elif plan.expected is float and not math.isfinite(value):
            errors.append(FieldError(plan.name, "must be finite"))
        elif plan.choices is None:  # an Avro enum already guarantees its symbols
            errors.extend(FieldError(plan.name, r) for r in plan.constraint_reasons(value))
    return errors
