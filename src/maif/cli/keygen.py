"""`maif keygen`: an Ed25519 signing key pair, or with ``--x25519`` an X25519 encryption key pair."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives import serialization

from maif.cli.keyfiles import save_x25519_key_pair, write_new_file
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.errors import ConfigError
from maif.format import aead, signing

SIGNING_KEY_NAMES = ("maif.key", "maif.pub")
ENCRYPTION_KEY_NAMES = ("maif-x25519.key", "maif-x25519.pub")


def keygen_command(
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="Directory for the key files.")],
    x25519: Annotated[
        bool, typer.Option("--x25519", help="Make an X25519 encryption pair (for --encrypt-for) instead.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing key files.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Create a key pair: DIR/maif.key (private, mode 0600) and DIR/maif.pub, or the X25519 pair
    DIR/maif-x25519.key and DIR/maif-x25519.pub with --x25519."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        result = generate_key_pair(output_dir, x25519=x25519, force=force)
        output.result({"ok": True, **result})
        output.human(
            f"[green]created[/green] {result['kind']} key pair, key id [bold]{result['key_id']}[/bold]"
        )
        output.human(f"  private key: {plain(result['private_key'])} (mode 0600: keep it secret)")
        use = "others encrypt to you with it" if x25519 else "others verify your signatures with it"
        output.human(f"  public key:  {plain(result['public_key'])} (share it: {use})")


def generate_key_pair(output_dir: Path, *, x25519: bool, force: bool) -> dict[str, Any]:
    """Write a fresh key pair into ``output_dir``; returns the paths, the kind and the key id (hex)."""
    names = ENCRYPTION_KEY_NAMES if x25519 else SIGNING_KEY_NAMES
    private_path, public_path = output_dir / names[0], output_dir / names[1]
    output_dir.mkdir(parents=True, exist_ok=True)
    _make_room(private_path, public_path, force=force)
    if x25519:
        encryption_key = aead.generate_recipient_key()
        save_x25519_key_pair(encryption_key, private_path, public_path)
        identifier = aead.recipient_key_id(encryption_key.public_key())
    else:
        signing_key = signing.generate_signing_key()
        pem = signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written here rather than with signing.save_private_key so the file is created exclusively,
        # never through a symlink and never over an existing key.
        write_new_file(private_path, pem, mode=0o600)
        public_pem = signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_new_file(public_path, public_pem, mode=0o644)
        identifier = signing.key_id(signing_key.public_key())
    return {
        "kind": "x25519" if x25519 else "ed25519",
        "private_key": str(private_path),
        "public_key": str(public_path),
        "key_id": identifier.hex(),
    }


def _make_room(*paths: Path, force: bool) -> None:
    existing = [path for path in paths if os.path.lexists(path)]
    if existing and not force:
        raise ConfigError(f"refusing to overwrite {existing[0]}", hint="pass --force to replace the key pair")
    for path in existing:
        if path.is_dir() and not path.is_symlink():
            raise ConfigError(f"{path} is a directory, not a key file")
        path.unlink()
