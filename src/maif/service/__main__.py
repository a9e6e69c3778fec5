"""``python -m maif.service --host H --port P --config FILE``: the same as ``maif serve``."""

import typer

from maif.cli.serve import serve_command

if __name__ == "__main__":
    typer.run(serve_command)
