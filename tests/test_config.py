"""Configuration: the seed's keys work, typos and bad values are refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maif.config import AgentConfig, SecurityConfig, StorageConfig, load_section
from maif.errors import ConfigError


def test_defaults_need_no_source() -> None:
    storage = load_section(StorageConfig, None, environ={})
    assert storage.data_dir == "./maif-data"
    assert storage.durability == "durable"


def test_seed_storage_keys_are_accepted_flat() -> None:
    seed = {
        "redis_url": "redis://127.0.0.1:6379",
        "kafka_brokers": ["127.0.0.1:9092"],
        "qdrant_url": "http://127.0.0.1:6333",
        "s3_endpoint": "http://127.0.0.1:9000",
        "s3_bucket": "maif-storage",
        "batch_size": 500,
        "batch_timeout_ms": 5,
        "compression_threshold": 1024,
        "max_memory_mb": 128,
        "write_parallelism": 4,
    }
    storage = load_section(StorageConfig, seed, environ={})
    assert storage.kafka_brokers == ("127.0.0.1:9092",)
    assert storage.batch_size == 500
    assert storage.max_memory_mb == 128


def test_kafka_brokers_from_the_environment_are_a_comma_separated_list() -> None:
    storage = load_section(StorageConfig, None,
                           environ={"MAIF_STORAGE_KAFKA_BROKERS": "10.0.0.1:9092, 10.0.0.2:9092"})
    assert storage.kafka_broker_list == ["10.0.0.1:9092", "10.0.0.2:9092"]
    assert (storage.kafka_topic, storage.kafka_partitions, storage.kafka_group) == ("maif-wal", 8, None)


@pytest.mark.parametrize(("settings", "named"), [
    ({"kafka_brokers": ["no-port"]}, "kafka_brokers"),
    ({"kafka_brokers": "127.0.0.1:99999"}, "kafka_brokers"),
    ({"kafka_topic": "has space"}, "kafka_topic"),
    ({"kafka_topic": ""}, "kafka_topic"),
    ({"kafka_group": "a/b"}, "kafka_group"),
    ({"kafka_partitions": 0}, "kafka_partitions"),
    ({"kafka_partitions": 100_000}, "kafka_partitions"),
    ({"kafka_write_timeout_s": 0}, "kafka_write_timeout_s"),
])
def test_bad_kafka_settings_are_refused_by_name(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_section(StorageConfig, settings, environ={})


def test_the_log_defaults_to_kafka_with_brokers_else_local_and_nats_is_chosen_explicitly() -> None:
    assert load_section(StorageConfig, None, environ={}).log == "local"
    assert load_section(StorageConfig, {"kafka_brokers": "127.0.0.1:9092"}, environ={}).log == "kafka"
    nats_url_only = load_section(StorageConfig, {"nats_url": "nats://127.0.0.1:4222"}, environ={})
    assert nats_url_only.log == "local"  # nats_url alone serves the agent task queue
    chosen = load_section(StorageConfig, None, environ={"MAIF_STORAGE_LOG_BACKEND": "nats",
                                                       "MAIF_STORAGE_NATS_URL": "nats://127.0.0.1:4222"})
    assert (chosen.log, chosen.log_name, chosen.nats_log_partitions) == ("nats", "MAIF_WAL", 8)
    assert chosen.log_write_timeout_s == chosen.nats_write_timeout_s


@pytest.mark.parametrize(("settings", "named"), [
    ({"log_backend": "nats"}, "nats_url"),
    ({"log_backend": "kafka"}, "kafka_brokers"),
    ({"log_backend": "local", "kafka_brokers": "127.0.0.1:9092"}, "kafka_brokers"),
    ({"log_backend": "nats", "nats_url": "nats://127.0.0.1:4222", "kafka_brokers": "127.0.0.1:9092"},
     "kafka_brokers"),
    ({"log_backend": "zookeeper"}, "log_backend"),
    ({"nats_log_stream": "has.dot"}, "nats_log_stream"),
    ({"nats_log_partitions": 0}, "nats_log_partitions"),
    ({"nats_write_timeout_s": 0}, "nats_write_timeout_s"),
])
def test_bad_log_settings_are_refused_by_name(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_section(StorageConfig, settings, environ={})


def test_seed_security_keys() -> None:
    security = load_section(
        SecurityConfig,
        {
            "oauth_providers": {"http://127.0.0.1:4400": {"client_id": "maif", "jwks_uri": "http://x/jwks"}},
            "trusted_tpm_roots": ["/etc/maif/tpm-root.pem"],
            "min_trust_level_write": 3,
            "min_trust_level_read_sensitive": 4,
        },
        environ={},
    )
    assert security.oauth_providers["http://127.0.0.1:4400"].client_id == "maif"
    assert security.min_trust_level_write == 3


def test_seed_agent_keys() -> None:
    agent = load_section(
        AgentConfig,
        {"task_queue_size": 10, "processing_threads": 3, "batch_timeout_ms": 50, "max_retries": 1},
        environ={},
    )
    assert (agent.task_queue_size, agent.processing_threads, agent.max_retries) == (10, 3, 1)


def test_unknown_key_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as caught:
        load_section(StorageConfig, {"batch_sise": 10}, environ={})
    assert caught.value.hint == "did you mean 'batch_size'?"


@pytest.mark.parametrize(
    ("section", "raw"),
    [
        (StorageConfig, {"batch_size": 0}),
        (StorageConfig, {"batch_size": "many"}),
        (StorageConfig, {"durability": "sometimes"}),
        (SecurityConfig, {"min_trust_level_write": 6}),
        (AgentConfig, {"max_retries": -1}),
        (SecurityConfig, {"golden_pcrs": {"sha1": {"0": "00" * 20}}}),  # SHA-1 banks are refused
        (SecurityConfig, {"golden_pcrs": {"sha256": {"32": "00" * 32}}}),  # no PCR 32
        (SecurityConfig, {"golden_pcrs": {"sha256": {"seven": "00" * 32}}}),
        (SecurityConfig, {"golden_pcrs": {"sha256": {"7": "00" * 31}}}),  # not a SHA-256 digest
        (SecurityConfig, {"golden_pcrs": {"sha256": {"7": "zz" * 32}}}),
        (SecurityConfig, {"golden_pcrs": {"sha256": {"7": []}}}),  # a PCR nothing may equal
        (SecurityConfig, {"golden_pcrs": {"sha256": {}}}),
        (SecurityConfig, {"golden_pcrs": {"sha256": {"7": ["00" * 32] * 65}}}),
        (SecurityConfig, {"approvers": {"a": "ab" * 31}}),
        (SecurityConfig, {"approvers": {"": "ab" * 32}}),
        (SecurityConfig, {"approvers": {"a": "ab" * 32}}),  # k defaults to 2 of these 1
        (SecurityConfig, {"approvers": {"a": "ab" * 32, "b": "cd" * 32}, "approvals_required": 0}),
        (SecurityConfig, {"master_key_file": " "}),
    ],
)
def test_bad_values_are_refused(section: type, raw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_section(section, raw, environ={})


def test_the_attestation_policy_decodes_to_allowed_digests() -> None:
    security = load_section(
        SecurityConfig,
        {
            "golden_pcrs": {"sha256": {"0": "00" * 32, "7": ["11" * 32, "22" * 32]}},
            "approvers": {"approver-1": "ab" * 32, "approver-2": "cd" * 32},
            "approvals_required": 2,
        },
        environ={},
    )
    assert security.golden_pcr_policy() == {
        "sha256": {0: frozenset({bytes(32)}), 7: frozenset({b"\x11" * 32, b"\x22" * 32})}
    }
    assert security.approver_keys() == {"approver-1": b"\xab" * 32, "approver-2": b"\xcd" * 32}


def test_the_pcr_banks_a_policy_may_name_are_the_verifiers() -> None:
    from maif.config import PCR_BANKS
    from maif.security import tpm

    assert set(PCR_BANKS) == set(tpm.HASH_ALGORITHM_IDS)


def test_files_and_sections(tmp_path: Path) -> None:
    json_file = tmp_path / "maif.json"
    json_file.write_text(json.dumps({"storage": {"batch_size": 7}, "agent": {"max_retries": 9}}))
    assert load_section(StorageConfig, json_file, environ={}).batch_size == 7
    assert load_section(AgentConfig, str(json_file), environ={}).max_retries == 9
    toml_file = tmp_path / "maif.toml"
    toml_file.write_text('[storage]\ndata_dir = "/tmp/x"\nbatch_timeout_ms = 3.5\n')
    storage = load_section(StorageConfig, toml_file, environ={})
    assert (storage.data_dir, storage.batch_timeout_ms) == ("/tmp/x", 3.5)


def test_broken_files_are_config_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError):
        load_section(StorageConfig, broken, environ={})
    with pytest.raises(ConfigError):
        load_section(StorageConfig, tmp_path / "missing.json", environ={})
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(ConfigError):
        load_section(StorageConfig, listing, environ={})


def test_environment_overrides_files() -> None:
    environ = {"MAIF_STORAGE_BATCH_SIZE": "42", "MAIF_STORAGE_DATA_DIR": "/srv/maif"}
    storage = load_section(StorageConfig, {"batch_size": 7}, environ=environ)
    assert (storage.batch_size, storage.data_dir) == (42, "/srv/maif")
    with pytest.raises(ConfigError):
        load_section(StorageConfig, None, environ={"MAIF_STORAGE_BATCH_SISE": "1"})


def test_a_text_setting_from_the_environment_stays_text_when_it_looks_like_json() -> None:
    """Found configuring two `maif serve` nodes through MAIF_STORAGE_*: every environment value was
    parsed as JSON first, so ``MAIF_STORAGE_NODE_ID=1`` became the number 1 and was refused, and so
    was the S3 bucket ``2024``. Text settings take the variable's text as it is."""
    environ = {
        "MAIF_STORAGE_NODE_ID": "1",
        "MAIF_STORAGE_S3_BUCKET": "2024",
        "MAIF_STORAGE_S3_ENDPOINT": "http://127.0.0.1:8333",
        "MAIF_STORAGE_DATA_DIR": "true",
    }
    storage = load_section(StorageConfig, None, environ=environ)
    assert (storage.node_id, storage.s3_bucket, storage.data_dir) == ("1", "2024", "true")
    numbers = load_section(StorageConfig, None, environ={"MAIF_STORAGE_BATCH_SIZE": "7"})
    assert numbers.batch_size == 7  # other settings still parse
