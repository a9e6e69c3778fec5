"""The error root and the limits module hold their promises."""

from __future__ import annotations

import inspect

import maif.errors as errors
from maif import limits


def test_every_error_descends_from_the_root() -> None:
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, Exception)]
    assert classes, "no error classes found"
    for cls in classes:
        assert issubclass(cls, errors.MAIFError), cls


def test_every_error_class_is_drawn_in_the_hierarchy() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, f"{name} is missing from the hierarchy drawn in maif.errors"


def test_diagnostics_include_the_hint() -> None:
    error = errors.ConfigError("bad", hint="try this")
    assert error.diagnostics() == "bad\n  hint: try this"
    assert errors.LimitExceededError("payload", 10, 5).size == 10


def test_limits_are_positive_integers_named_with_units() -> None:
    for name, value in vars(limits).items():
        if name.startswith("_") or name in {"KiB", "MiB", "GiB", "Final", "annotations"}:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            assert value > 0, name
            assert name.endswith(("_max", "_min")), f"limit {name} must end in _max or _min"
