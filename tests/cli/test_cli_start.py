"""The CLI's start: `maif --help` imports no command module, and each command imports only its own.

Start time itself is measured in benchmarks/cli_start_bench.py, never asserted here; these tests pin
what makes it short (which modules a start imports) and that the lazy listing says what the commands say.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from maif.cli.main import COMMANDS, app, load_command

HEAVY = ("numpy", "fastapi", "rich", "maif.storage", "maif.service", "maif.security.manager", "maif.format")


def modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(completed.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], prefix: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for name in modules)


def test_importing_the_entry_point_loads_no_heavy_module() -> None:
    modules = modules_after("import maif.cli.main")
    assert [name for name in HEAVY if loaded(modules, name)] == []
    assert not any(loaded(modules, entry.module) for entry in COMMANDS.values())


def test_help_lists_every_command_without_importing_one() -> None:
    code = (
        "import contextlib, io, sys\nfrom maif.cli.main import app\nsys.argv = ['maif', '--help']\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n    app()"
    )
    modules = modules_after(code)
    assert [name for name in HEAVY if loaded(modules, name)] == []
    listing = CliRunner().invoke(app, ["--help"]).output
    assert all(f"  {name} " in listing for name in COMMANDS)


def test_verify_imports_the_format_but_not_the_store_or_the_service() -> None:
    modules = modules_after("from maif.cli.main import load_command\nload_command('verify')")
    assert loaded(modules, "maif.format")
    assert not loaded(modules, "maif.storage") and not loaded(modules, "fastapi")


FUNCTION_COMMANDS = [name for name, entry in COMMANDS.items() if entry.attribute.endswith("_command")]


@pytest.mark.parametrize("name", FUNCTION_COMMANDS)
def test_each_listed_summary_is_the_first_paragraph_of_the_commands_help(name: str) -> None:
    command = load_command(name)
    function = command.callback
    docstring = inspect.getdoc(function) or ""
    first_paragraph = " ".join(docstring.split("\n\n")[0].split())
    assert COMMANDS[name].summary == first_paragraph
    assert CliRunner().invoke(app, [name, "--help"]).exit_code == 0
