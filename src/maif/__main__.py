"""`python -m maif` runs the command-line interface."""

from maif.cli.main import main

if __name__ == "__main__":
    main()
