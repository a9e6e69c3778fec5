"""Build hook: compiles the container's C core (src/maif/format/_core.c, ADR 0090) at install.

The shared library is written next to its source, so an editable install (scripts/setup) imports it
from the source tree and a wheel carries it as a platform-specific file. The compiler is the one this
Python was built with (``CC``, else ``cc``); warnings are errors. Without a compiler or the Python
headers the install fails and says which Debian packages provide them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/maif/format/_core.c")
FLAGS = ("-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", "-fPIC", "-shared", "-std=c11")
MISSING = (
    "maif: cannot build the container's C core ({reason}). Install a C compiler and the Python headers "
    "(Debian: apt-get install gcc python3-dev), then install again."
)


def compiler() -> list[str]:
    configured = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    command = shlex.split(configured)
    if not command or shutil.which(command[0]) is None:
        command = ["cc"]
    if shutil.which(command[0]) is None:
        raise RuntimeError(MISSING.format(reason=f"no C compiler: {configured!r} not found"))
    return command


def build(root: Path) -> Path:
    """Compile the core into src/maif/format/ and return the library's path."""
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        raise RuntimeError(MISSING.format(reason=f"no Python.h in {include}"))
    target = root / SOURCE.with_name("_core" + sysconfig.get_config_var("EXT_SUFFIX"))
    # macOS links an extension's Python symbols when the interpreter loads it
    platform_flags = ["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else []
    command = [*compiler(), *FLAGS, *platform_flags, f"-I{include}", str(root / SOURCE), "-o", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            MISSING.format(reason="the compiler failed") + f"\n$ {shlex.join(command)}\n{result.stderr}"
        )
    return target


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return  # an sdist ships the source; the wheel built from it compiles
        target = build(Path(self.root))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(target)] = str(target.relative_to(Path(self.root) / "src"))
