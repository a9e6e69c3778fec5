"""maif.cli.plain_values converts exactly as Typer's own (pydantic) converters do, without pydantic.

Every parameter of every command that was given a plain converter is run beside the converter Typer
builds for it, on the same values: the results, or the refusals and their messages, must be equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from maif.cli.main import COMMANDS, app, load_command
from maif.cli.plain_values import _PlainValues


def app_group() -> Any:
    return typer.main.get_command(app)


def every_parameter() -> list[tuple[str, Any]]:
    found = []
    for name in COMMANDS:
        command = load_command(name)
        for subcommand in [command, *getattr(command, "commands", {}).values()]:
            found += [(f"{name} {subcommand.name} {param.name}", param) for param in subcommand.params]
    return found


PARAMETERS = every_parameter()
CONVERTED = [(label, param) for label, param in PARAMETERS if isinstance(param._runtime_param, _PlainValues)]


def outcome(converter: Any, value: Any, param: Any) -> tuple[str, Any]:
    try:
        return "value", converter.coerce(value, param=param, ctx=None)
    except BadParameter as refusal:
        return "refused", refusal.format_message()


@pytest.fixture(scope="module")
def sample_values(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    folder = tmp_path_factory.mktemp("values")
    (folder / "file").write_text("x")
    unreadable = folder / "unreadable"
    unreadable.write_text("x")
    unreadable.chmod(0)
    texts = ["", ".", "-", "a b", "no/such", str(folder), str(folder / "file"), str(unreadable), "é\udcff"]
    return [None, True, False, 3, b"bytes", Path("p"), *texts, tuple(texts), [str(folder), "x"], ()]


def test_most_parameters_take_the_plain_converter() -> None:
    assert len(CONVERTED) >= 0.6 * len(PARAMETERS)
    assert {label.split()[0] for label, _ in CONVERTED} >= {"verify", "pack", "unpack", "inspect", "keygen"}


@pytest.mark.parametrize(("label", "param"), CONVERTED, ids=[label for label, _ in CONVERTED])
def test_the_plain_converter_matches_typers_own(label: str, param: Any, sample_values: list[Any]) -> None:
    typers_own = build_runtime_param(param.type_descriptor)
    for value in sample_values:
        if (param.multiple or param.nargs == -1) != isinstance(value, (list, tuple)) and value is not None:
            continue  # Click hands a multi-value parameter a tuple, any other one value
        plain = outcome(param._runtime_param, value, param)
        assert plain == outcome(typers_own, value, param), (label, value)


@pytest.mark.parametrize("command", [app_group(), load_command("verify"), load_command("audit")])
def test_the_help_option_made_on_first_use_is_converted_too(command: Any) -> None:
    context = command.make_context("maif", [], resilient_parsing=True)
    assert isinstance(command.get_help_option(context)._runtime_param, _PlainValues)
