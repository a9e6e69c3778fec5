"""Request and response bodies of the HTTP API (pydantic models; they become the OpenAPI schemas).

Binary fields travel as standard base64 (``payload_base64``) or lowercase hex (digests, key ids).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from maif import limits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BlockCreate(_Strict):
    """A small block: the payload inline as base64 (use a raw application/octet-stream body for large)."""

    id: str | None = Field(None, min_length=1, max_length=limits.block_id_bytes_max)
    block_type: str = Field("TEXT", min_length=4, max_length=4)
    payload_base64: str = Field("", max_length=limits.service_json_body_bytes_max)
    metadata: dict[str, Any] = Field(default_factory=dict)
    agent_id: str | None = Field(None, min_length=1, max_length=limits.agent_id_bytes_max)
    version: str = Field("1.0", max_length=limits.block_version_bytes_max)
    parents: list[str] = Field(default_factory=list, max_length=limits.block_parents_max)
    timestamp: float | None = None


class WriteReceiptOut(BaseModel):
    block_id: str
    digest: str  # hex of the block digest (also the ETag)
    lsn: int
    payload_length: int
    parts: int  # 0 for a block stored whole; the part count of a streamed upload


class DeleteReceiptOut(BaseModel):
    block_id: str
    lsn: int  # the tombstone's log sequence number: the deletion is durable
    parts: int  # parts of a streamed block deleted with it (0 for a block stored whole)


class CompactionOut(BaseModel):
    packs_examined: int
    packs_rewritten: int
    live_frames_copied: int
    garbage_frames_dropped: int
    bytes_before: int
    bytes_after: int
    bytes_reclaimed: int


class BlockOut(BaseModel):
    id: str
    block_type: str
    agent_id: str
    timestamp: float
    version: str
    parents: list[str]
    metadata: dict[str, Any]
    payload_length: int
    digest: str
    payload_base64: str | None  # None for streamed (parted) blocks: fetch them raw


class BlockSummaryOut(BaseModel):
    block_id: str
    block_type: str
    agent_id: str
    timestamp: float
    version: str
    parents: list[str]
    payload_length: int
    digest: str
    lsn: int


class BlockList(BaseModel):
    blocks: list[BlockSummaryOut]
    next_after: str | None  # pass as ``after`` for the next page; None at the end


class SearchRequest(_Strict):
    vector: list[float] = Field(min_length=1, max_length=limits.vector_dimensions_max)
    limit: int = Field(10, ge=1, le=limits.service_search_limit_max)
    score_threshold: float | None = Field(None, ge=-1.0, le=1.0)
    agent_id: str | None = Field(None, min_length=1, max_length=limits.agent_id_bytes_max)


class SearchHitOut(BaseModel):
    block_id: str
    score: float
    agent_id: str
    block_type: str


class SearchResult(BaseModel):
    hits: list[SearchHitOut]


class ChallengeOut(BaseModel):
    nonce_base64: str
    agent_id: str


class AttestationIn(_Strict):
    quote_base64: str = Field(max_length=4 * limits.tpm_attest_bytes_max)
    signature_base64: str = Field(max_length=4 * limits.tpm_signature_bytes_max)
    ak_public_base64: str = Field(max_length=4 * limits.tpm_public_bytes_max)
    nonce_base64: str = Field(max_length=128)
    pcr_values: dict[str, dict[str, str]] = Field(default_factory=dict, max_length=limits.tpm_pcr_banks_max)
    platform_id: str = Field("", max_length=256)


class KeyProofIn(_Strict):
    key_id_hex: str = Field(max_length=128)
    signature_base64: str = Field(max_length=256)


class ApprovalIn(_Strict):
    approver_id: str = Field(min_length=1, max_length=limits.agent_id_bytes_max)
    signature_base64: str = Field(max_length=256)


class BootstrapRequest(_Strict):
    attestation: AttestationIn | None = None
    key_proof: KeyProofIn | None = None
    approvals: list[ApprovalIn] = Field(default_factory=list, max_length=limits.approvers_max)


class EnrollmentIn(_Strict):
    """An agent's TPM: its EK (TPM2B_PUBLIC) and EK certificate with the intermediates up to a trusted
    root, and the AK (TPM2B_PUBLIC, optionally also as PEM) to enrol for the caller's identity."""

    agent_id: str | None = Field(None, min_length=1, max_length=limits.agent_id_bytes_max)
    ek_public_base64: str = Field(max_length=4 * limits.tpm_public_bytes_max)
    ek_certificate_base64: str = Field(max_length=2 * limits.tpm_certificate_bytes_max)
    intermediates_base64: list[str] = Field(
        default_factory=list, max_length=limits.tpm_certificate_chain_depth_max
    )
    ak_public_base64: str = Field(max_length=4 * limits.tpm_public_bytes_max)
    ak_pem: str | None = Field(None, max_length=limits.tpm_certificate_bytes_max)


class EnrollmentChallengeOut(BaseModel):
    agent_id: str
    credential_blob_base64: str  # TPM2B_ID_OBJECT
    encrypted_secret_base64: str  # TPM2B_ENCRYPTED_SECRET
    tpm2_tools_credential_base64: str  # the file `tpm2_activatecredential -i` reads
    expires_at: float


class ActivationIn(_Strict):
    agent_id: str | None = Field(None, min_length=1, max_length=limits.agent_id_bytes_max)
    activated_secret_base64: str = Field(max_length=256)


class EnrolledOut(BaseModel):
    agent_id: str
    ak_name_hex: str
    ek_certificate_sha256_hex: str
    enrolled_at: float


class KeyRegistrationIn(_Strict):
    """A raw Ed25519 public key and its signature over maif.security.trust.registration_statement."""

    agent_id: str | None = Field(None, min_length=1, max_length=limits.agent_id_bytes_max)
    public_key_hex: str = Field(min_length=64, max_length=64)
    signature_base64: str = Field(max_length=256)


class KeyOut(BaseModel):
    agent_id: str
    key_id_hex: str
    not_before: float
    not_after: float | None


class SessionOut(BaseModel):
    session_id: str  # send as the MAIF-Session header with the same bearer token
    agent_id: str
    trust_level: int
    trust_level_name: str
    permissions: list[str]
    scopes: list[str]
    expires_at: float


class AuditEntryOut(BaseModel):
    index: int  # position in the whole history (every segment)
    segment_index: int  # position in its segment: the leaf index of ``inclusion_proof``
    time: float
    actor: str
    action: str
    resource: str
    decision: str
    reason: str
    details: dict[str, Any]
    prev_hash: str
    leaf_hash: str
    inclusion_proof: list[str]  # hex nodes, RFC 9162, in the tree of ``tree_size`` entries


class CheckpointOut(BaseModel):
    log_id: str
    tree_size: int
    root: str
    timestamp: float
    key_id: str
    signature: str


class AuditPage(BaseModel):
    tree_size: int  # entries in the page's segment tree (sealed: the whole segment)
    root: str
    segment: int
    segment_first_index: int  # history position of the segment's entry 0
    total_entries: int  # in the whole history, archived segments included
    entries: list[AuditEntryOut]
    next_start: int | None
    checkpoint: CheckpointOut | None  # the segment's latest signed checkpoint (sealed: its head)
    consistency_proof: list[str]  # from checkpoint.tree_size (or old_size) to tree_size


class ExportRequest(_Strict):
    block_ids: list[str] = Field(min_length=1, max_length=limits.service_export_blocks_max)


class VerifyProblem(BaseModel):
    block_index: int | None
    region: str
    reason: str


class VerifyReport(BaseModel):
    ok: bool
    block_count: int
    versions: int
    problems: list[VerifyProblem]
    signer_key_ids: list[str]  # trusted keys with a valid signature on any version (the union)
    last_version_signer_key_ids: list[str]  # ...on the last version: what an "A and B signed" policy needs


class TaskIn(_Strict):
    task_id: str | None = Field(None, min_length=1, max_length=128)
    task_type: str = Field(min_length=1, max_length=128)
    input_data: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(1, ge=-1000, le=1000)
    input_blocks: list[str] = Field(default_factory=list, max_length=limits.agent_input_blocks_max)


class TaskAccepted(BaseModel):
    task_id: str
    accepted: bool  # False: a task with this id is already queued, running or finished


class TaskStatus(BaseModel):
    task_id: str
    status: str  # "pending" | "done" | "failed"
    block_ids: list[str]
    attempts: int
    reason: str | None


class Health(BaseModel):
    status: str
    degraded: dict[str, dict[str, Any]] | None = None
    """Each unavailable server ("postgresql", "s3", "redis", "qdrant"): for how long, and why."""


__all__ = [
    "ActivationIn",
    "ApprovalIn",
    "AttestationIn",
    "AuditEntryOut",
    "AuditPage",
    "BlockCreate",
    "BlockList",
    "BlockOut",
    "BlockSummaryOut",
    "BootstrapRequest",
    "ChallengeOut",
    "CheckpointOut",
    "CompactionOut",
    "DeleteReceiptOut",
    "EnrolledOut",
    "EnrollmentChallengeOut",
    "EnrollmentIn",
    "ExportRequest",
    "Health",
    "KeyOut",
    "KeyProofIn",
    "KeyRegistrationIn",
    "SearchHitOut",
    "SearchRequest",
    "SearchResult",
    "SessionOut",
    "TaskAccepted",
    "TaskIn",
    "TaskStatus",
    "VerifyProblem",
    "VerifyReport",
    "WriteReceiptOut",
]
