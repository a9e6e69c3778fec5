"""The `maif` command line: a thin shell over the library; no business logic lives here."""
