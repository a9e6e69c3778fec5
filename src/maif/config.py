"""One typed configuration, from a dict, a JSON or TOML file, or the environment.

Each part of MAIF reads its own section: :class:`StorageConfig`, :class:`SecurityConfig`,
:class:`AgentConfig`. The seed's flat keys work as documented::

    create_maif_storage({"data_dir": "./maif-data", "batch_size": 1000, "batch_timeout_ms": 5})
    create_maif_security_manager({"oauth_providers": {"https://issuer": {"client_id": "maif",
                                                                     "jwks_uri": "https://issuer/jwks"}}})

A file may hold all sections at once (``{"storage": {...}, "security": {...}, "agent": {...}}``) or one
section's keys flat. Environment variables override files: ``MAIF_STORAGE_BATCH_SIZE=500``,
``MAIF_AGENT_MAX_RETRIES=5``. Unknown keys are refused (a typo must not silently become a default), and
every value is type- and range-checked here, once, so the rest of MAIF can trust it.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from maif import limits
from maif.errors import ArgumentTypeError, ConfigError
from maif.validation import require_path, type_of

ConfigSource = Mapping[str, Any] | str | os.PathLike[str] | None


RESERVED_AGENT_PREFIX = "maif:"
"""Agent ids starting with this prefix name MAIF's own keys (the audit log's signer), never a caller."""

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
"""RFC 9068 section 2.1: the ``typ`` values of an access token (compared case-insensitively)."""


class OAuthProviderConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One trusted OAuth/OIDC issuer (docs/identity-providers.md has a profile for each common IdP).

    ``jwks_uri`` may be omitted to use OIDC discovery. ``client_id`` is MAIF's registration at the
    issuer. A token's ``aud`` must contain one of ``audience`` (a string or a list); when ``audience``
    is not set, the ``client_id`` and the security section's ``audience`` are both accepted, so the seed
    configuration and older configurations work as written. ``token_types`` lists the accepted ``typ``
    headers ("at+jwt" also matches "application/at+jwt"; "" means no ``typ``); accepting anything but
    at+jwt requires an explicit ``audience``, since ``aud`` is then all that tells an access token from
    an ID token. An ``azp`` claim, when present, must equal ``client_id`` or one of
    ``authorized_parties``. Scopes are read from ``scope_claim`` ("scope" or "scp", a space-separated
    string or a list). ``leeway_s`` is the clock skew allowed on ``exp``, ``nbf`` and ``iat``.

    Issuers never share agents or tenants (issue 14): a caller's agent id is ``agent_prefix + sub``, and
    :func:`check_issuer_namespaces` refuses providers whose prefixes could name the same agent. A
    ``tenant`` claim must be one of ``tenants`` or ``default_tenant``; left unset, any tenant is accepted
    when this is the only provider and none when there are several. A token without a ``tenant`` claim
    (or an empty one) is in ``default_tenant`` (unset: ``agent_prefix``, so "" for an unprefixed
    provider), which no other provider may list or default to (ADR 0027).
    """

    client_id: str
    jwks_uri: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    audience: str | tuple[str, ...] | None = None
    token_types: tuple[str, ...] = ("at+jwt",)
    authorized_parties: tuple[str, ...] = ()
    scope_claim: Literal["scope", "scp"] = "scope"
    leeway_s: float = 30.0
    agent_prefix: str = ""
    tenants: tuple[str, ...] | None = None
    default_tenant: str | None = None

    def __post_init__(self) -> None:
        _require_range("leeway_s", self.leeway_s, 0, limits.token_leeway_s_max)
        if len(self.agent_prefix.encode("utf-8", "replace")) >= limits.agent_id_bytes_max:
            raise ConfigError(f"agent_prefix must be shorter than {limits.agent_id_bytes_max} bytes")
        if self.agent_prefix.startswith(RESERVED_AGENT_PREFIX):
            raise ConfigError(
                f"agent_prefix {self.agent_prefix!r} starts with {RESERVED_AGENT_PREFIX!r}, which is "
                "reserved for MAIF's own agents"
            )
        if self.tenants is not None and not all(self.tenants):
            raise ConfigError(
                "tenants must not contain an empty tenant",
                hint="a token without a tenant claim is in the provider's default_tenant",
            )
        if not self.client_id:
            raise ConfigError("an OAuth provider's client_id must not be empty")
        audiences = self.audiences
        if audiences is not None and (not audiences or not all(audiences)):
            raise ConfigError("an OAuth provider's audience must be a non-empty string or list of them")
        if not 0 < len(self.token_types) <= limits.token_types_max:
            raise ConfigError(f"token_types must list between 1 and {limits.token_types_max} typ values")
        if audiences is None and any(kind.lower() not in ACCESS_TOKEN_TYPES for kind in self.token_types):
            raise ConfigError(
                f"token_types {list(self.token_types)} accepts tokens that are not RFC 9068 access tokens, "
                "so this provider needs an explicit audience",
                hint="set this provider's audience explicitly: the API's identifier, never the client_id "
                "an ID token is addressed to",
            )
        if not all(self.authorized_parties):
            raise ConfigError("authorized_parties must not contain an empty client id")

    @property
    def tenant_without_claim(self) -> str:
        """The tenant of this provider's tokens that carry no (or an empty) ``tenant`` claim."""
        return self.agent_prefix if self.default_tenant is None else self.default_tenant

    @property
    def audiences(self) -> tuple[str, ...] | None:
        """The configured ``audience`` as a tuple, or None when it is left to the default."""
        return (self.audience,) if isinstance(self.audience, str) else self.audience


_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
_NATS_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")  # no "." (subjects are <stream>.<partition>)


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Storage engine settings. Every server URL is optional: without them the store is embedded.

    Tiers: sealed packs sealed at least ``cold_after_age_s`` ago and unread for ``cold_after_idle_s``
    move from ``data_dir/packs`` (warm) to ``data_dir/cold`` (cold) every ``tier_interval_s`` seconds
    (0 turns the background move off; :meth:`MAIFStorage.migrate_tiers` still runs it on demand).

    Scale out (docs/adr/0070-scale-out.md): ``postgres_url`` (a libpq DSN) moves the metadata index
    and the vectors (pgvector) to PostgreSQL; with ``s3_endpoint`` and ``s3_bucket`` as well, chunks go
    to S3 as immutable pack objects located through PostgreSQL, so several nodes (each with its own
    ``data_dir`` and write-ahead log) serve one store; ``redis_url`` adds a shared cache; ``qdrant_url``
    puts the vectors in Qdrant. ``node_id`` names this node in the shared store (default: a random id
    kept in ``data_dir/NODE``).

    The shared log (docs/adr/0073-kafka-log.md): ``kafka_brokers`` (a list of "host:port", or one
    comma-separated string) makes the write-ahead log a Kafka-protocol topic; it needs ``postgres_url``,
    ``s3_endpoint`` and ``s3_bucket``. ``kafka_topic`` (default "maif-wal"; [A-Za-z0-9._-]) is created
    with ``kafka_partitions`` partitions (default 8, at most ``limits.kafka_partitions_max``) when
    missing; ``kafka_group`` (default "maif-<topic>") is the consumer group of the store's appliers;
    ``kafka_write_timeout_s`` (default 5) bounds how long a write waits for the broker's
    acknowledgement (then BackendUnavailableError) and for room while the appliers lag.

    ``log_backend`` chooses the write-ahead log: "local" (``data_dir/wal``), "kafka" (the topic above)
    or "nats" (docs/adr/0084-nats-log.md); by default "kafka" when ``kafka_brokers`` is set, else
    "local". "nats" puts the log in the JetStream stream ``nats_log_stream`` (default "MAIF_WAL";
    [A-Za-z0-9_-]) on ``nats_url``, records on the subjects ``<stream>.<partition>`` for
    ``nats_log_partitions`` partitions (default 8; fixed once the stream exists); it needs the shared
    backends like "kafka", and ``nats_write_timeout_s`` (default 5) means for it what
    ``kafka_write_timeout_s`` means for Kafka.

    ``nats_url`` (``nats://[user:password@]host:port`` or ``tls://...``) is the NATS JetStream server of
    the agent task queue: `maif worker` pulls from it and ``maif_agent_cluster(..., nats_url=...)``
    submits into it (docs/adr/0074-distributed-agents.md; the queue's own settings are in the agent
    section), and of the log when ``log_backend`` is "nats".
    """

    data_dir: str = "./maif-data"
    durability: Literal["durable", "bulk_unsafe"] = "durable"
    batch_size: int = 1000
    batch_timeout_ms: float = 2.0
    compression_threshold: int = 4096
    max_memory_mb: int = 256
    write_parallelism: int = 2
    redis_url: str | None = None
    postgres_url: str | None = None
    node_id: str | None = None
    kafka_brokers: tuple[str, ...] | str | None = None
    kafka_topic: str = "maif-wal"
    kafka_partitions: int = 8
    kafka_group: str | None = None
    kafka_write_timeout_s: float = 5.0
    log_backend: Literal["local", "kafka", "nats"] | None = None
    nats_url: str | None = None
    nats_log_stream: str = "MAIF_WAL"
    nats_log_partitions: int = 8
    nats_write_timeout_s: float = 5.0
    qdrant_url: str | None = None
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    cold_after_age_s: float = 7 * 24 * 3600.0
    cold_after_idle_s: float = 24 * 3600.0
    tier_interval_s: float = 60.0

    def __post_init__(self) -> None:
        _require_range("cold_after_age_s", self.cold_after_age_s, 0, 10 * 365 * 24 * 3600)
        _require_range("cold_after_idle_s", self.cold_after_idle_s, 0, 10 * 365 * 24 * 3600)
        _require_range("tier_interval_s", self.tier_interval_s, 0, 7 * 24 * 3600)
        _require_range("batch_size", self.batch_size, 1, 1_000_000)
        _require_range("batch_timeout_ms", self.batch_timeout_ms, 0, 60_000)
        _require_range("compression_threshold", self.compression_threshold, 0, 1 << 30)
        _require_range("max_memory_mb", self.max_memory_mb, 1, 1 << 20)
        _require_range("write_parallelism", self.write_parallelism, 1, 1024)
        _require_range("kafka_partitions", self.kafka_partitions, 1, limits.kafka_partitions_max)
        _require_range("kafka_write_timeout_s", self.kafka_write_timeout_s, 0.1, 300)
        for key in ("kafka_topic", "kafka_group"):
            name = getattr(self, key)
            if name is not None and not _KAFKA_NAME.fullmatch(name):
                raise ConfigError(f"{key} {name[:80]!r} must be 1-200 characters of [A-Za-z0-9._-]")
        for broker in self.kafka_broker_list:
            host, _, port = broker.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"kafka_brokers entry {broker[:80]!r} is not host:port",
                                  hint='e.g. "127.0.0.1:9092", or a list of them')
        if self.nats_url is not None:
            check_nats_url(self.nats_url)
        self._check_log_backend()

    def _check_log_backend(self) -> None:
        _require_range("nats_log_partitions", self.nats_log_partitions, 1, limits.kafka_partitions_max)
        _require_range("nats_write_timeout_s", self.nats_write_timeout_s, 0.1, 300)
        if not _NATS_STREAM_NAME.fullmatch(self.nats_log_stream):
            raise ConfigError(f"nats_log_stream {self.nats_log_stream[:80]!r} must be 1-200 characters of "
                              "[A-Za-z0-9_-]", hint='e.g. "MAIF_WAL"')
        if self.log_backend == "kafka" and self.kafka_brokers is None:
            raise ConfigError('log_backend "kafka" needs kafka_brokers',
                              hint='set kafka_brokers, e.g. "127.0.0.1:9092", or choose log_backend "local"')
        if self.log_backend == "nats" and self.nats_url is None:
            raise ConfigError('log_backend "nats" needs nats_url',
                              hint='set nats_url, e.g. "nats://127.0.0.1:4222", or choose log_backend '
                                   '"local"')
        if self.log_backend in ("local", "nats") and self.kafka_brokers is not None:
            raise ConfigError(f'log_backend "{self.log_backend}" with kafka_brokers set: which log is meant?',
                              hint='remove kafka_brokers, or set log_backend "kafka"')

    @property
    def log(self) -> Literal["local", "kafka", "nats"]:
        """The write-ahead log in use: ``log_backend``, or by default "kafka" when ``kafka_brokers`` is
        set, else "local" (so configurations written before ``log_backend`` keep their log)."""
        if self.log_backend is not None:
            return self.log_backend
        return "kafka" if self.kafka_brokers is not None else "local"

    @property
    def log_write_timeout_s(self) -> float:
        """How long a write waits for the shared log's acknowledgement (and for room while its appliers
        lag): ``nats_write_timeout_s`` or ``kafka_write_timeout_s``, whichever log is in use."""
        return self.nats_write_timeout_s if self.log == "nats" else self.kafka_write_timeout_s

    @property
    def log_name(self) -> str:
        """The shared log's name, under which its applied positions are kept: the topic or the stream."""
        return self.nats_log_stream if self.log == "nats" else self.kafka_topic

    @property
    def kafka_broker_list(self) -> list[str]:
        """``kafka_brokers`` as a list: a list as given, or a comma-separated string (the form of the
        ``MAIF_STORAGE_KAFKA_BROKERS`` environment variable) split."""
        brokers = self.kafka_brokers
        if brokers is None:
            return []
        items = brokers.split(",") if isinstance(brokers, str) else list(brokers)
        return [item.strip() for item in items]


PCR_BANKS = ("sha256", "sha384", "sha512")
"""PCR banks a golden policy may name (maif.security.tpm.HASH_ALGORITHMS: SHA-1 is refused everywhere)."""


class SecurityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Security settings: who is trusted to vouch for identities and hardware, and the trust floors.

    ``audience`` is accepted from every provider that sets no ``audience`` of its own (with its
    ``client_id``); a provider's ``audience`` takes precedence over it. ``audit_segment_entries`` and
    ``audit_segment_bytes`` bound one audit segment (the log rolls over at the first reached).

    Trust levels 3 to 5 (docs/identity-providers.md, "Trust levels 3 to 5"): ``trusted_tpm_roots`` are
    the EK CA certificates (PEM text, or paths of PEM/DER files); ``golden_pcrs`` is the PCR policy,
    ``{bank: {index: [allowed digests as hex]}}`` (a quote must select exactly these PCRs and each value
    must be one of its allowed digests); ``approvers`` maps approver ids to raw Ed25519 public keys
    (64 hex digits) of whom ``approvals_required`` (k of n) must approve a MULTI_PARTY_VERIFIED bootstrap.

    The master key (docs/adr/0081): ``master_key_file`` is read when ``MAIF_MASTER_KEY`` is not set
    (default: ``$XDG_CONFIG_HOME/maif/master.key``, i.e. ``~/.config/maif/master.key``). A key file inside
    the directory of the keystore and audit log it protects (or the store's data directory) is refused
    unless ``unsafe_master_key_in_data_dir`` says otherwise: whoever copies that directory would copy
    the key with it.
    """

    oauth_providers: dict[str, OAuthProviderConfig] = msgspec.field(default_factory=dict)
    trusted_tpm_roots: tuple[str, ...] = ()
    golden_pcrs: dict[str, dict[int, str | tuple[str, ...]]] = msgspec.field(default_factory=dict)
    approvers: dict[str, str] = msgspec.field(default_factory=dict)
    approvals_required: int = 2
    min_trust_level_write: int = 2
    min_trust_level_read_sensitive: int = 3
    audience: str = "urn:maif:store"
    master_key_file: str | None = None
    unsafe_master_key_in_data_dir: bool = False
    audit_segment_entries: int = limits.audit_segment_entries_max
    audit_segment_bytes: int = limits.audit_segment_bytes_max

    def __post_init__(self) -> None:
        check_issuer_namespaces(self.oauth_providers)
        _require_range("min_trust_level_write", self.min_trust_level_write, 0, 5)
        _require_range("min_trust_level_read_sensitive", self.min_trust_level_read_sensitive, 0, 5)
        # The audit log rolls over to a new segment at whichever bound comes first (docs/adr/0022).
        entries, size = self.audit_segment_entries, self.audit_segment_bytes
        _require_range("audit_segment_entries", entries, 2, limits.audit_segment_entries_max)
        _require_range("audit_segment_bytes", size, 4096, limits.audit_segment_bytes_max)
        self.golden_pcr_policy()  # refuses a malformed policy now, not at the first quote
        self.approver_keys()
        if self.approvers:
            _require_range("approvals_required", self.approvals_required, 1, len(self.approvers))
        if self.master_key_file is not None and not self.master_key_file.strip():
            raise ConfigError("master_key_file must not be empty", hint="leave it unset for the default")

    def golden_pcr_policy(self) -> dict[str, dict[int, frozenset[bytes]]]:
        """``golden_pcrs`` decoded: bank -> PCR index -> the allowed digests (raises ConfigError)."""
        if len(self.golden_pcrs) > limits.tpm_pcr_banks_max:
            raise ConfigError(f"golden_pcrs names more than {limits.tpm_pcr_banks_max} PCR banks")
        policy: dict[str, dict[int, frozenset[bytes]]] = {}
        for bank, values in self.golden_pcrs.items():
            if bank not in PCR_BANKS:
                raise ConfigError(f"golden_pcrs bank {bank!r} is not one of {list(PCR_BANKS)}")
            size = hashlib.new(bank).digest_size
            policy[bank] = {}
            for index, allowed in values.items():
                if not 0 <= index < limits.tpm_pcr_select_bytes_max * 8:
                    raise ConfigError(f"golden_pcrs {bank}:{index} is not a PCR index")
                digests = (allowed,) if isinstance(allowed, str) else allowed
                if not 0 < len(digests) <= limits.tpm_golden_values_per_pcr_max:
                    raise ConfigError(
                        f"golden_pcrs {bank}:{index} must list 1 to "
                        f"{limits.tpm_golden_values_per_pcr_max} allowed digests"
                    )
                policy[bank][index] = frozenset(
                    _hex_bytes(f"golden_pcrs {bank}:{index}", digest, size) for digest in digests
                )
            if not policy[bank]:
                raise ConfigError(f"golden_pcrs bank {bank!r} lists no PCR")
        return policy

    def approver_keys(self) -> dict[str, bytes]:
        """``approvers`` decoded: approver id -> raw 32-byte Ed25519 public key (raises ConfigError)."""
        if len(self.approvers) > limits.approvers_max:
            raise ConfigError(f"at most {limits.approvers_max} approvers may be registered")
        keys: dict[str, bytes] = {}
        for approver_id, public_key in self.approvers.items():
            if not 0 < len(approver_id.encode("utf-8", "replace")) <= limits.agent_id_bytes_max:
                raise ConfigError(
                    f"approver id {approver_id!r} must be 1 to {limits.agent_id_bytes_max} bytes"
                )
            keys[approver_id] = _hex_bytes(f"approver {approver_id!r}'s public key", public_key, 32)
        return keys


def _hex_bytes(what: str, text: str, size: int) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != size:
        raise ConfigError(f"{what} must be {size} bytes as {2 * size} hex digits, got {text[:80]!r}")
    return value


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Agent runtime settings.

    The distributed task queue (with the storage section's ``nats_url``; docs/adr/0074): tasks go to
    the JetStream work-queue stream ``task_stream`` (subject ``<task_stream>.tasks``), which holds at most
    ``task_stream_messages_max`` tasks and ``task_stream_bytes_max`` bytes (a submission that finds it
    full gets QueueFullError); a worker must acknowledge a task within ``task_ack_wait_s`` of its
    delivery or of its last progress signal, else it is delivered again; each task is attempted at most
    ``max_retries + 1`` times; dead letters go to the stream ``<task_stream>_DEAD``, which keeps the
    newest ``dead_letter_messages_max``. ``task_queue_size`` also caps the tasks one `maif worker`
    holds at once. Every worker looks for tasks the broker gave up on every ``task_sweep_interval_s``.
    A broker that does not answer within ``task_queue_connect_timeout_s`` at start is an error.

    A worker signs every block it stores with the Ed25519 key in ``worker_key_file`` (docs/adr/0085;
    default ``$XDG_CONFIG_HOME/maif/worker.key``, created owner-only on first run; refused inside the
    store's ``data_dir``, which a copy of the store would carry along).
    """

    task_queue_size: int = 1000
    processing_threads: int = 2
    batch_size: int = 32
    batch_timeout_ms: float = 10.0
    max_retries: int = 3
    task_stream: str = "MAIF_TASKS"
    task_ack_wait_s: float = 30.0
    task_stream_messages_max: int = 1_000_000
    task_stream_bytes_max: int = 1 << 30
    dead_letter_messages_max: int = 100_000
    task_sweep_interval_s: float = 5.0
    task_queue_connect_timeout_s: float = 5.0
    worker_key_file: str | None = None

    def __post_init__(self) -> None:
        _require_range("task_queue_size", self.task_queue_size, 1, 10_000_000)
        _require_range("processing_threads", self.processing_threads, 1, 1024)
        _require_range("batch_size", self.batch_size, 1, 100_000)
        _require_range("batch_timeout_ms", self.batch_timeout_ms, 0, 60_000)
        _require_range("max_retries", self.max_retries, 0, 100)
        _require_range("task_ack_wait_s", self.task_ack_wait_s, 1, 24 * 3600)
        _require_range("task_stream_messages_max", self.task_stream_messages_max, 1, 1 << 40)
        _require_range("task_stream_bytes_max", self.task_stream_bytes_max, 1 << 20, 1 << 50)
        _require_range("dead_letter_messages_max", self.dead_letter_messages_max, 1, 1 << 40)
        _require_range("task_sweep_interval_s", self.task_sweep_interval_s, 0.1, 3600)
        _require_range("task_queue_connect_timeout_s", self.task_queue_connect_timeout_s, 0.1, 300)
        if self.worker_key_file is not None and not self.worker_key_file.strip():
            raise ConfigError("worker_key_file must not be empty", hint="leave it unset for the default")
        name = self.task_stream
        if not 0 < len(name) <= 32 or not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
            raise ConfigError(
                f"task_stream must be 1 to 32 ASCII letters, digits, '_' or '-', got {name!r}",
                hint="it names JetStream streams and subjects, which refuse '.', '*', '>' and spaces",
            )


def check_nats_url(url: str) -> None:
    """Refuse a ``nats_url`` that is not ``nats://`` or ``tls://`` with a host (never echoing a password)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        host = None
    if host is None or parts.scheme not in ("nats", "tls"):
        raise ConfigError(
            "nats_url must be nats://[user:password@]host[:port] or tls://... (the value is not shown: "
            "it may hold a password)",
            hint="`scripts/services env` prints the URL of the local servers",
        )


_PREFIX_HINT = (
    "with several oauth_providers, give each a distinct agent_prefix that does not begin another "
    '(at most one may be empty), e.g. "keycloak/" and "entra/"'
)


def check_issuer_namespaces(providers: Mapping[str, OAuthProviderConfig]) -> None:
    """Refuse providers that could name the same agent or vouch for the same tenant (issue 14).

    One provider keeps the seed's meaning (agent id = ``sub``). With several, at most one may have the
    empty ``agent_prefix`` and no other prefix may begin another (``"a/"`` and ``"a/b/"`` could both
    produce ``"a/b/x"``); the verifier refuses a token of the unprefixed issuer whose ``sub`` begins with
    another issuer's prefix. So no two issuers can produce the same agent id. A tenant is listed by (or
    is the default tenant of) one provider only, so tokens without a tenant claim from two issuers never
    share a tenant.
    """
    if len(providers) < 2:
        return
    prefixes = sorted((provider.agent_prefix, issuer) for issuer, provider in providers.items())
    if prefixes[0][0] == prefixes[1][0] == "":
        raise ConfigError(
            f"issuers {prefixes[0][1]} and {prefixes[1][1]} could name the same agent: both have an empty "
            "agent_prefix",
            hint=_PREFIX_HINT,
        )
    named = [(prefix, issuer) for prefix, issuer in prefixes if prefix]
    for (shorter, first), (longer, second) in itertools.pairwise(named):
        if longer.startswith(shorter):
            raise ConfigError(
                f"issuers {first} and {second} could name the same agent: agent_prefix {shorter!r} "
                f"{'equals' if shorter == longer else 'begins'} agent_prefix {longer!r}",
                hint=_PREFIX_HINT,
            )
    owner_by_tenant: dict[str, str] = {}
    for issuer, provider in providers.items():
        for tenant in {*(provider.tenants or ()), provider.tenant_without_claim}:
            other = owner_by_tenant.setdefault(tenant, issuer)
            if other != issuer:
                raise ConfigError(
                    f"tenant {tenant!r} is listed by (or the default_tenant of) issuers {other} and "
                    f"{issuer}; a tenant belongs to one",
                    hint="list each tenant under the one provider that vouches for it; a provider's "
                    "default_tenant (unset: its agent_prefix) is its own",
                )


SectionT = TypeVar("SectionT", StorageConfig, SecurityConfig, AgentConfig)

_SECTION_NAMES: dict[type[msgspec.Struct], str] = {
    StorageConfig: "storage",
    SecurityConfig: "security",
    AgentConfig: "agent",
}


def load_section(
    section: type[SectionT], source: ConfigSource = None, *, environ: Mapping[str, str] | None = None
) -> SectionT:
    """Build one validated config section from ``source`` and the environment (which wins)."""
    name = _SECTION_NAMES[section]
    raw = dict(_section_mapping(_read_source(source), name))
    raw.update(_environment_overrides(section, name, os.environ if environ is None else environ))
    _refuse_unknown_keys(section, raw, name)
    try:
        return msgspec.convert(raw, section, strict=False)
    except msgspec.ValidationError as error:
        raise ConfigError(f"invalid {name} configuration: {error}") from error


def _read_source(source: ConfigSource) -> Mapping[str, Any]:
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return source
    if not isinstance(source, str | os.PathLike):
        raise ArgumentTypeError(f"configuration must be a mapping, a path or None, got {type_of(source)}")
    path = require_path("configuration file path", source)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from error
    try:
        loaded = tomllib.loads(text.decode()) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"configuration file {path} is not valid {path.suffix or 'JSON'}: {error}"
        ) from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"configuration file {path} must hold a table/object at the top level")
    return loaded


def _section_mapping(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A file may nest sections ({"storage": {...}}) or hold one section's keys flat."""
    if name in raw:
        nested = raw[name]
        if not isinstance(nested, Mapping):
            raise ConfigError(f"configuration section {name!r} must be a table/object")
        return nested
    return {key: value for key, value in raw.items() if key not in _SECTION_NAMES.values()}


def _environment_overrides(
    section: type[msgspec.Struct], name: str, environ: Mapping[str, str]
) -> dict[str, Any]:
    prefix = f"MAIF_{name.upper()}_"
    overrides: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(prefix):
            continue
        field = key[len(prefix) :].lower()
        if field not in section.__struct_fields__:
            raise ConfigError(
                f"environment variable {key} names no {name} setting", hint=_close(section, field)
            )
        text = _is_text(typing.get_type_hints(section)[field])
        overrides[field] = value if text else _parse_environment_value(value)
    return overrides


def _is_text(annotation: Any) -> bool:
    """A setting that holds text (``str`` or ``str | None``): its variable is taken as written, so
    ``MAIF_STORAGE_NODE_ID=1`` is the text "1", not the number 1."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    return str in members and all(member in (str, type(None)) for member in members)


def _parse_environment_value(value: str) -> Any:
    """JSON when it parses (numbers, lists, objects), otherwise the plain string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _refuse_unknown_keys(section: type[msgspec.Struct], raw: Mapping[str, Any], name: str) -> None:
    for key in raw:
        if not isinstance(key, str):
            raise ArgumentTypeError(f"{name} setting names must be str, got {type_of(key)}")
        if key not in section.__struct_fields__:
            raise ConfigError(f"unknown {name} setting {key!r}", hint=_close(section, key))


def _close(section: type[msgspec.Struct], key: str) -> str | None:
    matches = difflib.get_close_matches(key, section.__struct_fields__, n=1)
    return f"did you mean {matches[0]!r}?" if matches else None


def user_config_dir() -> Path:
    """``$XDG_CONFIG_HOME/maif`` (``~/.config/maif``): where keys that must not travel with a store live
    by default (docs/adr/0081). A relative XDG_CONFIG_HOME is ignored, as the XDG Base Directory
    specification says."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".config")
    return Path(base) / "maif"


def _require_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


__all__ = [
    "ACCESS_TOKEN_TYPES",
    "PCR_BANKS",
    "AgentConfig",
    "ConfigSource",
    "OAuthProviderConfig",
    "SecurityConfig",
    "StorageConfig",
    "check_issuer_namespaces",
    "check_nats_url",
    "load_section",
    "user_config_dir",
]
