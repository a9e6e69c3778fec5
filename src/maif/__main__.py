"""`python -m maif` runs the command-line interface."""

from maif.cli.main import main

main()
