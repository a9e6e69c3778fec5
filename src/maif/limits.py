"""Every bound MAIF enforces, as a named constant, with the relations between them asserted at import.

Names end in the unit and ``_max``/``_min`` (``block_payload_bytes_max``). A parser checks the
relevant bound *before* it allocates or decodes; exceeding one raises ``LimitExceededError``.
Each subsystem owns one section below; keep new bounds in their section and add an assertion for any
relation another bound relies on.
"""

from __future__ import annotations

from typing import Final

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

# --- identity strings (shared) -----------------------------------------------------------------
agent_id_bytes_max: Final = 256
"""UTF-8 length of an agent id; agent ids name producers in every block and audit record."""

# --- format: blocks and containers ------------------------------------------------------------
block_id_bytes_max: Final = 256
"""UTF-8 length of a block id (producer-chosen, or a 36-character UUIDv7)."""

block_version_bytes_max: Final = 64
"""UTF-8 length of a block's version label."""

block_payload_bytes_max: Final = 1 * GiB
"""Largest payload of one block, before compression or encryption."""

block_metadata_bytes_max: Final = 64 * KiB
"""Largest encoded (MessagePack) metadata map of one block."""

block_metadata_depth_max: Final = 32
"""Deepest nesting of maps and arrays in one block's metadata (the top-level map is depth 1). Checked by
an iterative scan of the MessagePack bytes before they are decoded, so hostile nesting never recurses."""

block_zstd_window_bytes_max: Final = 8 * MiB
"""Largest zstd window a compressed payload's frame may declare: what a decoder allocates for it. The
writer's frames use at most 2 MiB (levels 1 and 3)."""

decompression_buffer_bytes_max: Final = 8 * MiB
"""Most decompressed bytes held in memory at once while a payload is streamed (unpack, full verification);
each step feeds the decoder only as much input as can expand to this much output."""

decompressed_read_bytes_max: Final = block_payload_bytes_max
"""Total-size budget of one read of a compressed payload: the decoder stops and refuses as soon as its
output would pass the declared payload length, and never passes this bound whatever a header says."""

materialized_payload_bytes_max: Final = 64 * MiB
"""Total-size budget of one ``ContainerReader.block()`` (and of ``payload_view`` of a compressed block):
the most payload bytes it builds in memory. A larger payload (a genuine one, or a 33 KB zstd frame that
declares 1 GiB) is refused with LimitExceededError before anything is decompressed or copied;
``stream_block`` reads any valid payload in ``decompression_buffer_bytes_max`` pieces, and a caller that
means to hold a larger payload passes its own budget."""

block_parents_max: Final = 256
"""Most parent references one block may carry (the provenance graph's in-degree)."""

container_blocks_max: Final = 1 << 28
"""Most blocks in one .maif container (bounds the index a reader allocates)."""

manifest_bytes_max: Final = 1 * MiB
"""Largest encoded manifest (root, signatures, recipient key wraps)."""

manifest_signatures_max: Final = 16
"""Most co-signatures on one manifest."""

recipients_max: Final = 64
"""Most recipient keys a container's data key may be wrapped for."""

container_versions_max: Final = 1 << 20
"""Most versions (signed commits) in one container; bounds the trailer chain a reader walks."""

trailer_candidates_max: Final = 4096
"""Most trailer-magic matches a reader examines while looking for the last complete version in a torn
tail (each costs a checksum over a manifest), so a hostile tail cannot make opening slow."""

trailer_search_hash_bytes_max: Final = 64 * MiB
"""Most manifest bytes a reader hashes, over all candidates, while looking for the last complete version
in a torn tail: without it 4096 crafted candidates of 1 MiB each would cost 4 GiB of hashing."""

# --- storage engine ----------------------------------------------------------------------------
wal_record_bytes_max: Final = block_payload_bytes_max + 4 * MiB
"""Largest payload of one write-ahead log record: one encoded block (payload + metadata + header)."""

wal_segment_bytes_max: Final = 64 * MiB
"""A WAL segment is closed and a new one started once it reaches this size (a big record may overshoot)."""

wal_group_bytes_max: Final = 16 * MiB
"""Most bytes one group commit writes with one write call (a single larger record forms its own group).
Recovery treats damage within this distance of the end of the last segment as a torn tail."""

wal_group_records_max: Final = 100_000
"""Most records in one group commit (bounds the per-group futures and index lists)."""

wal_segments_max: Final = 100_000
"""Most segment files a WAL directory may hold (bounds the directory scan at open)."""

wal_resync_candidates_max: Final = 4 * 1024 * 1024
"""Most positions recovery tries (each found by searching for the record magic) while it looks for
records that still validate after a damaged one: bounds the work of opening a damaged log. When it
runs out, the damage counts as corruption (the log is never truncated for want of searching)."""

engine_unapplied_bytes_min: Final = 8 * MiB
"""Floor of the read-your-writes map of acknowledged but not yet applied blocks; above its bound
(a share of max_memory_mb, at least this) writers wait for the applier (backpressure)."""

engine_apply_batch_records_max: Final = 4096
"""Most log records the applier takes in one batch (one put_chunks, one index transaction)."""

kafka_partitions_max: Final = 1024
"""Most partitions a store's Kafka-protocol log topic may be created with (``kafka_partitions``)."""

kafka_record_bytes_max: Final = 8 * MiB
"""Largest record MAIF writes to (or applies from) the Kafka-protocol log: a block whose encoded form
is larger is refused before it is produced (a broker's own cap is often 1 MiB: raise the topic's
``max.message.bytes`` to match); a larger record found on the topic is skipped, counted and logged."""

kafka_pending_positions_poll_s: Final = 0.05
"""While this node has acknowledged writes not yet applied, how often it reads the shared applied
positions (one small PostgreSQL query) to learn which of them another node applied."""

engine_inline_read_bytes_max: Final = 256 * KiB
"""A warm block no larger than this is read on the event loop itself (index lookup on a read-only SQLite
connection, pread of local pack frames: microseconds from the page cache) instead of through worker
threads; larger blocks, cold packs and wrapped backends take the threaded path."""

engine_latency_samples_max: Final = 65_536
"""Size of the bounded reservoir of ack latencies behind the p50/p99 statistics."""

engine_search_limit_max: Final = 10_000
"""Most hits one semantic search may ask for."""

index_get_many_max: Final = 1_000
"""Most block ids one metadata-index lookup (``get_many``, ``MAIFStorage.exists_many``) takes."""

engine_list_limit_max: Final = 100_000
"""Most summaries one list_blocks call may return."""

# --- storage backends: chunks, packs, indexes (E2) ---
chunk_bytes_max: Final = 8 * MiB
"""Largest chunk a ChunkStore accepts (FastCDC's max size is far below; callers may pass whole
payloads up to this size as one chunk)."""

pack_bytes_max: Final = 64 * MiB
"""A pack file is sealed once it reaches this size (one chunk may overshoot by chunk_bytes_max)."""

packs_max: Final = 1_000_000
"""Most pack files one store may hold (bounds the directory scan at open)."""

pack_index_entries_max: Final = 1 << 30
"""Most entries the pack index may hold (bounds what open() reads into memory)."""

vector_dimensions_max: Final = 16_384
"""Largest embedding dimension the vector index accepts."""

vector_filter_fields_max: Final = 16
"""Most filterable attributes one vector may carry (and one search may filter on)."""

vector_filter_text_bytes_max: Final = 256
"""UTF-8 length of one search filter's name or value (the filterable attributes are agent_id and
block_type, so no longer value can match anything)."""

vector_map_bytes_max: Final = 4 * GiB
"""Largest persisted id mapping file of the vector index (checked before decoding)."""

object_key_bytes_max: Final = 1024
"""UTF-8 length of an ObjectStore key."""

# --- security ----------------------------------------------------------------------------------
# security: identity, trust, policy, the manager (maif.security.identity, credentials, trust, manager)
token_bytes_max: Final = 8 * KiB
"""Longest bearer token (compact JWS) accepted; checked before any base64 or JSON decoding."""

token_lifetime_s_max: Final = 24 * 3600
"""Longest exp - iat an access token may claim; a longer-lived token is refused as mis-issued."""

token_scopes_max: Final = 64
"""Most scopes one token may carry."""

token_leeway_s_max: Final = 300
"""Most clock skew (``leeway_s``) an OAuth provider may be granted on exp, nbf and iat."""

token_types_max: Final = 8
"""Most ``typ`` header values one OAuth provider may accept (``token_types``)."""

jwks_document_bytes_max: Final = 256 * KiB
"""Largest JWKS or OIDC discovery document read from an issuer (read stops one byte past it)."""

jwks_keys_max: Final = 64
"""Most keys one issuer's JWKS may hold."""

jwk_kid_bytes_max: Final = 256
"""Longest key id (kid) in a token header or a JWKS."""

revoked_token_ids_max: Final = 1 << 20
"""Most revoked token ids (jti) remembered at once; entries leave when their token expires."""

password_bytes_max: Final = 1024
"""Longest password accepted for hashing or verification (argon2id hashes any length; this caps work)."""

api_key_bytes_max: Final = 256
"""Longest presented API key string."""

credentials_max: Final = 1 << 20
"""Most passwords plus API keys one credential store holds."""

approvers_max: Final = 64
"""Most registered approvers (the n of k-of-n multi-party verification)."""

sealed_data_bytes_max: Final = block_payload_bytes_max + 64 * KiB
"""Largest sealed (encrypt_sensitive_data) envelope accepted for decryption."""

block_signature_envelope_bytes_max: Final = 4 * KiB
"""Largest block signature envelope (sign_maif_block) accepted for verification."""

gate_batch_resources_max: Final = 100_000
"""Most resources one Gate.authorize_many call decides (and records as one audit entry)."""

# security: keystore and audit log (maif.security.keys, maif.security.audit)
keystore_file_bytes_max: Final = 16 * MiB
"""Largest keystore file read (checked before decrypting or decoding)."""

keystore_keys_max: Final = 16_384
"""Most keys (all agents, current and retired) one keystore holds."""

master_key_file_bytes_max: Final = 4 * KiB
"""Largest master key file read (32 raw bytes, or their hex/base64 text)."""

audit_record_bytes_max: Final = 64 * KiB
"""Largest encoded audit record (one entry or one checkpoint) in an audit log frame."""

audit_event_text_bytes_max: Final = 4 * KiB
"""UTF-8 length of one text field of an audit event (actor, action, resource, reason, a detail)."""

audit_event_details_max: Final = 64
"""Most extra (detail) fields one audit event may carry."""

audit_detail_names_cached_max: Final = 256
"""Distinct audit detail field names whose redaction verdict is remembered (the gate uses a handful)."""

audit_log_entries_max: Final = 1 << 24
"""Most entries one audit log holds (the writer keeps 32 bytes per entry in memory for proofs)."""

audit_checkpoints_max: Final = 1 << 24
"""Most signed checkpoints one audit log holds."""

audit_segment_entries_max: Final = 1 << 20
"""Most entries one audit segment holds before the writer rolls over to the next (the default bound;
a caller may choose a smaller one). About 3 hours of a service auditing 100 decisions per second."""

audit_segment_bytes_max: Final = 256 * MiB
"""Largest audit segment file before the writer rolls over to the next (default bound, as above)."""

audit_segments_max: Final = 1 << 24
"""Most segment files one audit log directory holds (and one verification walks)."""

audit_sync_waiters_max: Final = 1 << 16
"""Most asynchronous appends waiting at once for one audit log's sync (one per request in flight)."""

audit_write_buffer_bytes_max: Final = 1 * MiB
"""Most bytes of audit frames held in memory before they are written (the flusher writes them, with
its sync, in one system call; an appender past this bound writes them itself)."""

# security: TPM 2.0 attestation (maif.security.tpm, maif.security.attestation)
tpm_public_bytes_max: Final = 1024
"""Largest TPMT_PUBLIC accepted (an RSA-4096 key with a SHA-512 policy is about 600 bytes)."""

tpm_digest_bytes_max: Final = 64
"""Largest TPM2B_DIGEST (sizeof TPMU_HA: SHA-512)."""

tpm_name_bytes_max: Final = 2 + tpm_digest_bytes_max
"""Largest TPM2B_NAME of an object: nameAlg then its digest."""

tpm_extra_data_bytes_max: Final = 64
"""Largest TPM2B_DATA extraData in a quote (the qualifying data a TPM accepts)."""

tpm_rsa_modulus_bytes_max: Final = 512
"""Largest RSA modulus or RSA signature (RSA-4096)."""

tpm_rsa_key_bits_min: Final = 2048
"""Smallest RSA attestation or endorsement key accepted."""

tpm_ecc_coordinate_bytes_max: Final = 66
"""Largest ECC coordinate or ECDSA r/s (P-521)."""

tpm_signature_bytes_max: Final = 4 + 2 + tpm_rsa_modulus_bytes_max
"""Largest TPMT_SIGNATURE (sigAlg, hashAlg, then an RSA TPM2B; ECDSA is smaller)."""

tpm_attest_bytes_max: Final = 1024
"""Largest TPMS_ATTEST of a quote (a full quote is under 300 bytes)."""

tpm_pcr_banks_max: Final = 4
"""Most PCR banks one quote may select."""

tpm_pcr_select_bytes_max: Final = 4
"""Largest PCR selection bitmap (sizeofSelect): 32 PCRs."""

tpm_golden_values_per_pcr_max: Final = 64
"""Most allowed digests the golden PCR policy lists for one PCR (firmware versions in a fleet)."""

tpm_event_log_events_max: Final = 4096
"""Most events replay_event_log accepts in one log."""

tpm_event_bytes_max: Final = 64 * KiB
"""Largest single event (the measured data) in a replayed event log."""

tpm_certificate_bytes_max: Final = 16 * KiB
"""Largest DER or PEM certificate (EK certificate or CA) accepted."""

tpm_certificate_chain_depth_max: Final = 5
"""Most certificates between an EK certificate and a trusted root, both included."""

attestation_outstanding_nonces_max: Final = 65536
"""Most unexpired challenges one verifier holds at once (all agents)."""

attestation_nonces_per_agent_max: Final = 16
"""Most unexpired challenges one agent may hold; the oldest is dropped when a new one is issued."""

attestation_pending_enrollments_max: Final = 4096
"""Most enrollments begun and not yet completed that one verifier holds."""

attestation_enrolled_agents_max: Final = 1_000_000
"""Most agents one verifier keeps an enrolled attestation key for."""

attestation_state_file_bytes_max: Final = 64 * MiB
"""Largest sealed attestation state file (maif.security.enrollments): about 150k enrolled agents with RSA
AKs. Rewritten whole on each enrolment, so a deployment near it wants a database instead."""


# --- agent runtime -----------------------------------------------------------------------------
agent_remembered_task_ids_max: Final = 1_000_000
"""Most finished task ids one agent remembers for idempotence (oldest forgotten first)."""

agent_dead_letters_max: Final = 10_000
"""Most dead-letter records one agent keeps in memory (each is also written to the store)."""

agent_results_max: Final = 4096
"""Most finished tasks whose outcome one agent keeps for ``MAIFAgent.result`` (oldest forgotten first;
their ids stay remembered for idempotence, their blocks stay in the store)."""

agent_latency_samples_max: Final = 4096
"""Task latency samples one agent keeps for its percentiles (a sliding window)."""

agent_retry_backoff_s_max: Final = 30.0
"""Longest wait between two attempts of a failing task."""

agent_text_bytes_max: Final = 4 * MiB
"""Largest text a built-in text handler analyses."""

agent_image_bytes_max: Final = 32 * MiB
"""Largest encoded image the built-in image handler decodes."""

agent_image_pixels_max: Final = 50_000_000
"""Most pixels the image handler lets Pillow decode (a decompression bomb is refused first)."""

agent_input_blocks_max: Final = 64
"""Most stored blocks one task may name as its inputs."""

task_id_chars_max: Final = 128
"""Longest task id; block ids are ``<agent>:<task>:<n>`` and must fit ``block_id_bytes_max``."""

agent_keywords_max: Final = 20
"""Most keywords / entities / relations a built-in handler reports per kind per task."""

# --- distributed agents: the NATS JetStream task queue (maif.agents.queue, `maif worker`) -------------
queue_task_bytes_max: Final = 1 * MiB
"""Largest task message on the queue (the encoded task); larger ones are refused at submission and
dead-lettered if they reach a worker by another route."""

queue_dead_letter_reason_chars_max: Final = 500
"""Longest reason a dead-letter message carries."""

queue_fetch_batch_max: Final = 256
"""Most tasks one worker pulls in one fetch (it pulls at most its free slots)."""

worker_in_flight_max: Final = 100_000
"""Most tasks one `maif worker` process holds (pulled, not yet acknowledged) at once."""

cluster_workers_max: Final = 4096
"""Most workers whose heartbeat the cluster's key-value bucket holds (its size bound)."""

worker_heartbeat_bytes_max: Final = 4096
"""Largest heartbeat (a worker's load and counters) one worker publishes."""


# --- HTTP service (maif.service) --------------------------------------------------------------
service_json_body_bytes_max: Final = 2 * MiB
"""Largest JSON request body (a small block's base64 payload, a search, an export selection); larger
bodies are refused with 413 before they are parsed."""

service_part_bytes_max: Final = 4 * MiB
"""A raw upload larger than this is spooled to disk, then stored as parts of exactly this size plus a
manifest block, so a transfer of any size holds at most about two parts in memory."""

service_upload_bytes_max: Final = 64 * GiB
"""Largest raw (streamed) block upload."""

service_spool_bytes_max: Final = 128 * GiB
"""Most bytes of request bodies spooled to local disk at once, over all uploads in progress (then 503)."""

service_spool_free_bytes_min: Final = 1 * GiB
"""Free space a spooled upload must leave on the spool's file system (else 507): uploads never fill the
disk the store lives on."""

service_spool_write_bytes_min: Final = 1 * MiB
"""Spooled bodies are written to disk in pieces of at least this size (one thread hop per piece)."""

service_concurrent_requests_max: Final = 1024
"""Most connections and requests one ``maif serve`` process handles at once; more are answered 503 by
uvicorn (``limit_concurrency``) instead of queueing without bound. ``service.max_concurrent_requests``
may lower it."""

service_header_metadata_bytes_max: Final = 8 * KiB
"""Longest X-MAIF-Metadata header (JSON) accepted with a raw upload."""

service_auth_cache_entries_max: Final = 16_384
"""Most verified bearer tokens whose security context the service caches (LRU, until token expiry)."""

service_sessions_max: Final = 16_384
"""Most trust sessions (POST /v1/trust/bootstrap) held at once; the oldest is dropped first."""

service_idempotency_entries_max: Final = 16_384
"""Most remembered Idempotency-Key responses (LRU)."""

service_list_limit_max: Final = 500
"""Most blocks one GET /v1/blocks page returns."""

service_search_limit_max: Final = 100
"""Most hits one POST /v1/search returns."""

service_export_blocks_max: Final = 10_000
"""Most blocks one POST /v1/export selection may name."""

service_audit_page_entries_max: Final = 100
"""Most audit entries (each with its inclusion proof) one GET /v1/audit page returns."""

service_verify_upload_bytes_max: Final = 4 * GiB
"""Largest .maif file POST /v1/verify accepts."""

service_trusted_keys_max: Final = 16
"""Most trusted public keys one POST /v1/verify request may name."""

service_request_id_bytes_max: Final = 64
"""Longest caller-supplied X-Request-Id kept (others are replaced by a fresh id)."""

service_task_agents_max: Final = 64
"""Most callers (agent ids) with a running task agent in one service process (POST /v1/tasks)."""

service_request_head_bytes_max: Final = token_bytes_max + 2 * service_header_metadata_bytes_max + 16 * KiB
"""Largest request head (request line and headers) the service takes (``service.request_head_bytes_max``,
kept by maif.service.connections): room for a bearer token, X-MAIF-Metadata and X-MAIF-Parents at their
limits, and the rest; a larger head is refused with 431 before anything reads it."""

service_connections_per_client_max: Final = 128
"""Default bound on the connections one peer IP address holds open (``service.connections_per_client_max``;
more are closed at once, see maif.service.connections)."""

service_timeout_s_max: Final = 3600.0
"""Longest keep-alive, request-head or request-body timeout ``maif serve`` may be configured with."""

# --- command line (maif.cli) -------------------------------------------------------------------
cli_recorded_path_bytes_max: Final = 4096
"""UTF-8 length of a relative path `maif pack` records and `maif unpack` accepts (Linux PATH_MAX)."""

cli_recorded_path_parts_max: Final = 256
"""Most components in a recorded path; also the deepest directory `maif pack` descends into."""

cli_jsonld_sniff_bytes_max: Final = 64 * MiB
"""Largest file `maif pack` parses as JSON to recognise JSON-LD; larger ones are classified without it."""

cli_npy_header_bytes_max: Final = 64 * KiB
"""Largest .npy header `maif pack` reads to recognise a float32 embedding file."""

cli_key_file_bytes_max: Final = 16 * KiB
"""Largest key file the CLI reads (a PEM key is under 200 bytes; anything far larger is not one)."""

cli_skipped_rows_max: Final = 1000
"""Most skipped paths (symlinks, special files) a `pack` result lists; it counts them all."""

cli_query_vector_bytes_max: Final = 1 * MiB
"""Largest query vector `maif search` reads: the --vector JSON text or the --vector-file .npy file."""

# --- sanity relations --------------------------------------------------------------------------
assert keystore_keys_max * 1024 <= keystore_file_bytes_max  # a key record is under 1 KiB
assert audit_event_text_bytes_max * 8 <= audit_record_bytes_max and audit_record_bytes_max < (1 << 32)
# A segment is an ordinary audit log, so its rotation bounds sit inside that log's bounds.
assert 2 <= audit_segment_entries_max <= audit_log_entries_max
assert audit_segment_bytes_max >= 64 * audit_record_bytes_max
assert audit_write_buffer_bytes_max >= 2 * audit_record_bytes_max
assert block_metadata_bytes_max < block_payload_bytes_max
assert block_parents_max * 16 < block_metadata_bytes_max * 4
assert manifest_signatures_max <= 255 and recipients_max <= 255
# The .maif block header stores these in u16/u8/u32 fields (docs/format/SPEC.md section 4.1).
assert block_id_bytes_max <= 0xFFFF and agent_id_bytes_max <= 0xFFFF and block_parents_max <= 0xFFFF
assert block_version_bytes_max <= 0xFF and block_payload_bytes_max < (1 << 32)
assert block_metadata_bytes_max < (1 << 32) and manifest_bytes_max < (1 << 32)
# The torn-tail search can always check at least one manifest of the largest size.
assert manifest_bytes_max <= trailer_search_hash_bytes_max
# A zstd block regenerates at most 128 KiB: the streaming decoder's buffer holds several per step.
assert 128 * KiB * 4 <= decompression_buffer_bytes_max <= block_payload_bytes_max
assert decompression_buffer_bytes_max <= materialized_payload_bytes_max <= block_payload_bytes_max
assert decompressed_read_bytes_max >= block_payload_bytes_max  # every valid payload fits one read's budget
# msgspec decodes and re-encodes metadata recursively, one level per call: far below Python's limit.
assert block_metadata_depth_max <= 100
# Random 96-bit AES-GCM nonces stay safe for at most 2^32 encryptions under one data key (SP 800-38D).
assert container_blocks_max <= (1 << 32) and container_versions_max < (1 << 32)
# A recorded path travels in block metadata, so it must fit there with room for the other keys.
assert cli_recorded_path_bytes_max * 4 <= block_metadata_bytes_max
assert cli_jsonld_sniff_bytes_max <= block_payload_bytes_max
# A query of the largest dimension fits as JSON (<= 32 bytes a number) and as float64 .npy.
assert vector_dimensions_max * 32 <= cli_query_vector_bytes_max
assert cli_npy_header_bytes_max + vector_dimensions_max * 8 <= cli_query_vector_bytes_max
assert wal_record_bytes_max < (1 << 32) and wal_group_bytes_max <= wal_segment_bytes_max
# Recovery can search a whole torn group (every 4-byte record magic in it) before it runs out.
assert wal_resync_candidates_max * 4 >= wal_group_bytes_max
assert engine_apply_batch_records_max <= wal_group_records_max
assert chunk_bytes_max < pack_bytes_max < (1 << 32)  # pack frames and offsets use u32 lengths
assert pack_index_entries_max < (1 << 31) and packs_max < (1 << 32)
assert tpm_extra_data_bytes_max >= 32 and tpm_name_bytes_max == 2 + tpm_digest_bytes_max
assert tpm_attest_bytes_max <= 0xFFFF and tpm_public_bytes_max <= 0xFFFF  # TPM2B sizes are u16
assert attestation_nonces_per_agent_max <= attestation_outstanding_nonces_max
# A streamed upload's part is one block, and its manifest lists every part in its payload.
assert service_part_bytes_max <= block_payload_bytes_max and service_part_bytes_max <= wal_record_bytes_max
assert service_upload_bytes_max // service_part_bytes_max * 300 <= block_payload_bytes_max
assert service_json_body_bytes_max <= service_part_bytes_max
assert service_upload_bytes_max <= service_spool_bytes_max
assert service_verify_upload_bytes_max <= service_spool_bytes_max
assert service_spool_write_bytes_min <= service_part_bytes_max
assert service_list_limit_max <= engine_list_limit_max and service_search_limit_max <= engine_search_limit_max
assert service_export_blocks_max <= gate_batch_resources_max
assert service_header_metadata_bytes_max <= block_metadata_bytes_max
# An agent forgets a task's outcome before its id, so result() can tell "forgotten" from "never accepted".
assert agent_results_max <= agent_remembered_task_ids_max
# A task message holds at most its input blocks' ids, and a dead letter carries the whole message.
assert agent_input_blocks_max * block_id_bytes_max < queue_task_bytes_max
assert queue_fetch_batch_max <= worker_in_flight_max
# An agent id is a token subject, and the audit log records it as an actor.
assert agent_id_bytes_max <= audit_event_text_bytes_max and jwk_kid_bytes_max < token_bytes_max
# A search may filter on any agent id a block can carry.
assert agent_id_bytes_max <= vector_filter_text_bytes_max
assert kafka_record_bytes_max <= wal_group_bytes_max  # one record always fits one produce group
