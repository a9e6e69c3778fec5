"""How every `maif` command talks: Rich for people, one JSON document for machines, errors on stderr.

A command builds a plain result (dicts, lists, numbers, strings, bytes) and hands it to
:meth:`CommandOutput.result`; with ``--json`` it becomes one JSON document on stdout, otherwise the command
renders it with Rich. Errors the world can cause (:class:`~maif.errors.MAIFError`, ``OSError``) are caught
by :func:`reporting_errors`, printed as one human line on stderr (plus a hint line when there is one) and
turned into the documented exit code; with ``--json`` stdout still receives a JSON document describing the
error, so a script never has to parse stderr. Bugs (anything else) keep their traceback on stderr and exit
with 70, never with a code that means something about the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import PurePath
from typing import Any

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from maif.cli.exit_codes import ExitCode, exit_code_for
from maif.errors import MAIFError


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: bytes become lowercase hex, enums their value, structs dicts."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if isinstance(value, msgspec.Struct):
        return jsonable(msgspec.structs.asdict(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({field.name: getattr(value, field.name) for field in dataclasses.fields(value)})
    return value


def plain(value: object) -> str:
    """``value`` as text that Rich prints literally: file names and ids from a hostile container may hold
    ``[...]``, which Rich would otherwise read as markup (and fail on, or restyle)."""
    return escape(str(value))


def describe_error(error: BaseException) -> str:
    """One human line (and a hint line when there is one) for an error the world caused."""
    if isinstance(error, MAIFError):
        return error.diagnostics()
    if isinstance(error, OSError):
        reason = error.strerror or type(error).__name__
        return f"{reason}: {error.filename}" if error.filename is not None else reason
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return str(error)


class CommandOutput:
    """The output channel of one command invocation, in human (Rich) or machine (JSON) mode."""

    def __init__(self, *, json_output: bool) -> None:
        self.json_output = json_output
        # Resolved at each write (file=None), so test runners that swap sys.stdout still capture it.
        self.console = Console(highlight=False, soft_wrap=True)  # lines stay whole for grep; tables fit

    def result(self, document: Mapping[str, Any]) -> None:
        """Write the command's machine-readable result, in JSON mode only."""
        if self.json_output:
            import json  # only a --json run writes JSON: a human one does not pay the import

            sys.stdout.write(json.dumps(jsonable(document), indent=2, sort_keys=False) + "\n")
            sys.stdout.flush()

    def human(self, *renderables: Any) -> None:
        """Print for a person, in human mode only."""
        if not self.json_output:
            self.console.print(*renderables)

    def warn(self, message: str) -> None:
        """A warning on stderr, in both modes (it never pollutes the JSON on stdout)."""
        typer.echo(f"warning: {message}", err=True)

    def error(self, error: BaseException, code: ExitCode) -> None:
        typer.echo(f"error: {describe_error(error)}", err=True)
        if self.json_output:
            self.result(
                {
                    "ok": False,
                    "error": {
                        "type": type(error).__name__,
                        "message": error.message if isinstance(error, MAIFError) else describe_error(error),
                        "hint": error.hint if isinstance(error, MAIFError) else None,
                        "exit_code": int(code),
                        "exit_name": code.name.lower(),
                    },
                }
            )


@contextlib.contextmanager
def reporting_errors(output: CommandOutput) -> Iterator[None]:
    """Turn errors the world can cause into one stderr line and the documented exit code."""
    try:
        yield
    except (MAIFError, OSError, KeyboardInterrupt) as error:
        code = exit_code_for(error)
        output.error(error, code)
        raise typer.Exit(int(code)) from None
    except typer.Exit:
        raise
    except Exception as error:  # noqa: BLE001 - a bug: keep its traceback, but never exit 1 ("integrity")
        traceback.print_exc()
        typer.echo(f"error: internal error ({type(error).__name__}); this is a bug in MAIF", err=True)
        raise typer.Exit(int(ExitCode.INTERNAL_ERROR)) from None


__all__ = ["CommandOutput", "describe_error", "jsonable", "plain", "reporting_errors"]
