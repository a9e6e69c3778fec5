"""Drive a real software TPM (swtpm + tpm2-tools) through scripts/servers/swtpm.sh for attestation tests.

Nothing here is simulated: every EK, AK, quote and activated credential comes from a running swtpm. The
verifier under test never calls these tools; only the "agent side" of the tests does.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from maif.security.attestation import AttestationVerifier, HardwareAttestation

REPO_ROOT = Path(__file__).resolve().parents[2]
SWTPM_SCRIPT = REPO_ROOT / "scripts" / "servers" / "swtpm.sh"
QUOTED_PCRS = "sha256:0,1,2,3,7"
QUOTED_INDICES = (0, 1, 2, 3, 7)
BOOT_MEASUREMENT = b"maif-test-boot-measurement"
_PCR_LINE = re.compile(r"^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$")


def run_script(*arguments: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SWTPM_SCRIPT), *map(str, arguments)],
        check=check,
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_port_pair() -> int:
    """A port P with P and P+1 free on 127.0.0.1 (swtpm's control port is always P+1)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as control:
            try:
                control.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of local ports for swtpm")


@dataclass(frozen=True)
class AttestationKey:
    """An AK made by the TPM under its EK: its directory holds ak.ctx, ak.pub (TPM2B_PUBLIC), ak.pem."""

    directory: Path
    kind: str

    @property
    def public(self) -> bytes:
        return (self.directory / "ak.pub").read_bytes()

    @property
    def pem(self) -> bytes:
        return (self.directory / "ak.pem").read_bytes()


@dataclass(frozen=True)
class Endorsement:
    ek_public: bytes
    ek_certificate: bytes
    root_pem: bytes
    intermediate_pem: bytes


def _process_identity(pid: int) -> str:
    """pid and start time (clock ticks since boot): a reused pid does not match."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return f"{pid} {fields[19]}"


def reap_orphaned_tpms(workdir: Path) -> int:
    """Stop the swtpm processes that test runs killed before their teardown (SIGKILL, a lost session)
    left behind: only those whose work directory, under the same pytest temp root, names an owner
    process that is gone. Another live test run's TPMs are left alone. Returns how many were stopped."""
    root = next((parent for parent in workdir.parents if parent.name.startswith("pytest-of-")), None)
    if root is None:
        return 0
    stopped = 0
    for pid_file in [*root.glob("pytest-*/*/swtpm.pid"), *root.glob("pytest-*/*/*/swtpm.pid")]:
        directory = pid_file.parent
        owner = (directory / "owner").read_text() if (directory / "owner").exists() else ""
        owner_pid = owner.split()[0] if owner else ""
        if not owner_pid.isdigit() or _process_identity(int(owner_pid)) == owner:
            continue  # its test run is still alive, or nothing proves it is gone: not ours to stop
        if run_script("status", directory, check=False).returncode == 0:
            run_script("stop", directory, check=False)
            stopped += 1
    return stopped


class SoftwareTpm:
    """One swtpm process in its own work directory and port pair."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port_pair()
        self._ak_count = 0

    def start(self) -> None:
        reap_orphaned_tpms(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "owner").write_text(_process_identity(os.getpid()))
        run_script("start", self.workdir, self.port)

    def stop(self) -> None:
        run_script("stop", self.workdir, check=False)

    def endorsement(self) -> Endorsement:
        ek_dir = self.workdir / "ek"
        run_script("ek", self.workdir, ek_dir)
        ca = self.workdir / "ca"
        return Endorsement(
            ek_public=(ek_dir / "ek.pub").read_bytes(),
            ek_certificate=(ek_dir / "ekcert.der").read_bytes(),
            root_pem=(ca / "swtpm-localca-rootca-cert.pem").read_bytes(),
            intermediate_pem=(ca / "issuercert.pem").read_bytes(),
        )

    def create_ak(self, kind: str) -> AttestationKey:
        """A new AK (child of the EK) in its own directory, next to a copy of the EK context."""
        self._ak_count += 1
        directory = self.workdir / f"ak-{self._ak_count}-{kind}"
        directory.mkdir()
        (directory / "ek.ctx").write_bytes((self.workdir / "ek" / "ek.ctx").read_bytes())
        run_script("ak", self.workdir, directory, kind)
        return AttestationKey(directory, kind)

    def create_unrestricted_signing_key(self) -> AttestationKey:
        """A real TPM signing key that is NOT restricted (so it would sign forged attestations)."""
        self._ak_count += 1
        directory = self.workdir / f"signkey-{self._ak_count}"
        run_script("signkey", self.workdir, directory)
        return AttestationKey(directory, "rsa-unrestricted")

    def quote(
        self, ak: AttestationKey, qualifying_data: bytes, pcrs: str = QUOTED_PCRS
    ) -> tuple[bytes, bytes]:
        run_script("quote", self.workdir, ak.directory, qualifying_data.hex(), pcrs)
        return (ak.directory / "quote.msg").read_bytes(), (ak.directory / "quote.sig").read_bytes()

    def certify(self, ak: AttestationKey) -> tuple[bytes, bytes]:
        run_script("certify", self.workdir, ak.directory)
        return (ak.directory / "certify.msg").read_bytes(), (ak.directory / "certify.sig").read_bytes()

    def activate(self, ak: AttestationKey, credential_file: bytes) -> bytes:
        path = ak.directory / "credential.bin"
        path.write_bytes(credential_file)
        run_script("activate", self.workdir, ak.directory, path)
        return (ak.directory / "activated.bin").read_bytes()

    def persist(self, ak: AttestationKey, handle: int) -> None:
        """Make ``ak`` persistent so it survives a TPM Reset (its saved context would not)."""
        run_script("persist", self.workdir, ak.directory, f"0x{handle:08x}")

    def reboot(self, kind: str) -> None:
        """Power-cycle the TPM: "reset" (resetCount + 1) or "resume" (restartCount + 1)."""
        run_script("reboot", self.workdir, kind)

    def extend(self, pcr: int, data: bytes) -> None:
        run_script("extend", self.workdir, pcr, hashlib.sha256(data).hexdigest())

    def pcr_values(self, pcrs: str = QUOTED_PCRS) -> dict[str, dict[int, bytes]]:
        """PCR values as the agent reports them: read from the TPM with tpm2_pcrread."""
        output = run_script("pcrread", self.workdir, pcrs).stdout
        values: dict[str, dict[int, bytes]] = {}
        bank = ""
        for line in output.splitlines():
            if line.strip().endswith(":") and not _PCR_LINE.match(line):
                bank = line.strip().rstrip(":")
                continue
            match = _PCR_LINE.match(line)
            if match:
                values.setdefault(bank, {})[int(match.group(1))] = bytes.fromhex(match.group(2))
        return values

    def attest(
        self,
        verifier: AttestationVerifier,
        agent_id: str,
        ak: AttestationKey,
        *,
        binding: bytes | None = None,
        pcrs: str = QUOTED_PCRS,
    ) -> HardwareAttestation:
        """The agent's side of one round: take a challenge, quote over it, report the PCR values."""
        nonce = verifier.new_challenge(agent_id)
        qualifying_data = nonce if binding is None else hashlib.sha256(nonce + binding).digest()
        quote, signature = self.quote(ak, qualifying_data, pcrs)
        return HardwareAttestation(
            quote=quote,
            signature=signature,
            pcr_values=self.pcr_values(pcrs),
            ak_public=ak.public,
            nonce=nonce,
            platform_id=f"swtpm:{self.port}",
        )

    def enroll(self, verifier: AttestationVerifier, agent_id: str, ak: AttestationKey) -> None:
        """Full enrollment: MakeCredential by the verifier, ActivateCredential by this TPM."""
        endorsement = self.endorsement()
        challenge = verifier.begin_enrollment(
            agent_id,
            ek_public=endorsement.ek_public,
            ek_certificate=endorsement.ek_certificate,
            intermediates=[endorsement.intermediate_pem],
            ak_public=ak.public,
            ak_pem=ak.pem,
        )
        verifier.complete_enrollment(agent_id, self.activate(ak, challenge.tpm2_tools_credential_file()))
