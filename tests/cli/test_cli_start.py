"""The CLI's start: `maif --help` imports no command module, and each command imports only its own.

Start time itself is measured in benchmarks/cli_start_bench.py, never asserted here; these tests pin
what makes it short (which modules a start imports) and that the lazy listing says what the commands say.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maif.cli.main import COMMANDS, app, load_command

HEAVY = ("numpy", "fastapi", "rich", "maif.storage", "maif.service", "maif.security.manager", "maif.format")
# What `maif verify` of a file without embeddings does without (ADR 0082): numpy (the reader's index is
# decoded with the standard library), pydantic (Typer's converters for path, text and flag parameters are
# replaced by maif.cli.plain_values), the store, the service, and Rich's tables (drawn only on failure).
NOT_FOR_VERIFY = ("numpy", "pydantic", "pydantic_core", "fastapi", "maif.storage", "maif.service",
                  "rich.table")


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


def test_help_lists_every_command_without_importing_one(tmp_path: Path) -> None:
    modules = modules_after(run_in_fresh_interpreter(["--help"], tmp_path))
    assert [name for name in (*HEAVY, "pydantic") if loaded(modules, name)] == []
    listing = CliRunner().invoke(app, ["--help"]).output
    assert all(f"  {name} " in listing for name in COMMANDS)


def run_in_fresh_interpreter(arguments: list[str], cwd: Path) -> str:
    """The code that runs ``maif ARGUMENTS`` the way the console script does and asserts it exits 0."""
    return (
        f"import contextlib, io, os, sys\nos.chdir({str(cwd)!r})\nfrom maif.cli.main import app\n"
        f"sys.argv = ['maif', *{arguments!r}]\nstatus = None\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        app()\n    except SystemExit as exit:\n        status = exit.code\n"
        "assert status in (0, None), status"
    )


def test_verify_imports_the_format_but_not_the_store_or_the_service() -> None:
    modules = modules_after("from maif.cli.main import load_command\nload_command('verify')")
    assert loaded(modules, "maif.format")
    assert not loaded(modules, "maif.storage") and not loaded(modules, "fastapi")


def test_verifying_a_small_file_imports_neither_numpy_nor_pydantic(tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "one.txt").write_text("one block\n")
    assert runner.invoke(app, ["keygen", "-o", str(tmp_path / "keys")]).exit_code == 0
    packed = runner.invoke(app, ["pack", str(tmp_path / "one.txt"), "-o", str(tmp_path / "one.maif"), "--key",
                                 str(tmp_path / "keys" / "maif.key")])
    assert packed.exit_code == 0, packed.output
    verify = ["verify", "one.maif", "--trust", "keys/maif.pub"]
    modules = modules_after(run_in_fresh_interpreter(verify, tmp_path))
    assert loaded(modules, "maif.format.verify")
    assert [name for name in NOT_FOR_VERIFY if loaded(modules, name)] == []
    help_modules = modules_after(run_in_fresh_interpreter(["verify", "--help"], tmp_path))
    assert [name for name in NOT_FOR_VERIFY if loaded(help_modules, name)] == []


FUNCTION_COMMANDS = [name for name, entry in COMMANDS.items() if entry.attribute.endswith("_command")]


@pytest.mark.parametrize("name", FUNCTION_COMMANDS)
def test_each_listed_summary_is_the_first_paragraph_of_the_commands_help(name: str) -> None:
    command = load_command(name)
    function = command.callback
    docstring = inspect.getdoc(function) or ""
    first_paragraph = " ".join(docstring.split("\n\n")[0].split())
    assert COMMANDS[name].summary == first_paragraph
    assert CliRunner().invoke(app, [name, "--help"]).exit_code == 0
