"""Turn a command's path, text and flag arguments into values without pydantic (ADR 0082).

Typer 0.29 converts every parameter's value through a pydantic ``TypeAdapter``, built on first use: for
`maif verify` that is about 100 ms of its start (importing pydantic, pydantic-core, annotated-types and
importlib.metadata for pydantic's plugins), more than the verification of a small file. The values the
CLI's options take are almost all paths, text and flags, where the adapter is ``Path(text)`` (or the
value itself) followed by Typer's own path checks. So for a parameter whose annotation is ``Path``,
``str``, ``bool`` (``--help`` among them) or a list of these, with none of the options that change the
conversion (``parser``, a ``path_type``), this module gives Typer a converter of its own kind that does
the same without pydantic: the ``Path(text)`` step here, the checks by Typer's ``coerce_cli_path``
itself. A value of any other type (not what a command line gives) is handed to Typer's usual converter.
Numbers with bounds (the only other kind the CLI has) keep Typer's converter, pydantic and all.

It leans on Typer internals (``typer._coercion.RuntimeParam``, the ``_runtime_param`` a parameter
builds lazily, ``coerce_cli_path``); tests/cli/test_plain_values.py runs each converter beside Typer's
on the same inputs, and fails if a Typer upgrade renames them. Without them (another Typer),
:func:`convert_without_pydantic` leaves the command as Typer built it: slower, never different.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_path
except ImportError:  # a Typer without these internals: its own converters, as built
    RuntimeParam = None  # type: ignore[assignment,misc]


def convert_without_pydantic(command: Any) -> Any:
    """``command`` (a Click command or group built by Typer), its (and its subcommands') path, text
    and flag parameters given the converters of this module, its ``--help`` too; returns it."""
    if RuntimeParam is None:
        return command
    for subcommand in getattr(command, "commands", {}).values():
        convert_without_pydantic(subcommand)
    _convert(command.params)
    build_help_option = command.get_help_option  # made on first use, with the context's option names

    def get_help_option(ctx: Any) -> Any:
        option = build_help_option(ctx)
        _convert([option] if option is not None else [])
        return option

    command.get_help_option = get_help_option
    return command


def _convert(params: list[Any]) -> None:
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue
        converter = _converter_for(descriptor)
        if converter is not None:
            param._runtime_param = converter


def _converter_for(descriptor: Any) -> Any:
    info, annotation = descriptor.parameter_info, descriptor.annotation
    if descriptor.file_annotation is not None or info.parser is not None or info.path_type is not None:
        return None
    many = getattr(annotation, "__origin__", None) is list
    item = annotation.__args__[0] if many else annotation
    accepted = _ACCEPTED.get(item)
    if accepted is None:
        return None
    return _PlainValues(info, annotation, descriptor, many, item, accepted)


# What each annotation takes as it is; the command line gives text, and flags and defaults their own type.
_ACCEPTED: dict[Any, tuple[type, ...]] = {Path: (str, Path), str: (str,), bool: (bool,)}


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _PlainValues(RuntimeParam):
        """Typer's conversion of ``Path``, ``str`` or ``bool`` (or a list of them) without pydantic."""

        descriptor: Any
        many: bool
        item: type
        accepted: tuple[type, ...]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            items = list(value) if self.many and isinstance(value, (list, tuple)) else [value]
            if not all(isinstance(item, self.accepted) for item in items):
                # not what a command line gives: Typer's own converter, pydantic and all
                return build_runtime_param(self.descriptor)._coerce_value(value, param=param, ctx=ctx)
            converted = [self._one(item, param, ctx) for item in items]
            return converted if self.many else converted[0]

        def _one(self, value: str | Path | bool, param: Any, ctx: Any) -> Any:
            if self.item is not Path:
                return value
            assert not isinstance(value, bool)
            return coerce_cli_path(Path(value), self.parameter_info, path_type=Path, param=param, ctx=ctx)
