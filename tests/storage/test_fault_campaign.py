"""A short run of the fault campaign (scripts/fault_campaign.py): kill -9 rounds over a random mix of
writes, overwrites, deletes, compactions, migrations, exports and imports, then one round of damage at
rest per file kind. Nothing acknowledged may be lost, nothing unreadable may go unnamed.

The long campaign (1000+ rounds) is the script itself; this runs the same functions briefly. The
campaign seed is MAIF_FAULT_SEED (default below); a failure names the seed and round, replay it with the
script: ``scripts/fault_campaign.py --seed S --rounds R --keep-going``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from fault_campaign import CORRUPT_KINDS, Campaign

KILL_ROUNDS = 6
# One damage per file kind, a mode the engine handles today (the campaign draws among all modes).
DAMAGE = {"wal_middle": "flip_payload", "wal_tail": "flip_before_last_record", "index_sqlite": "flip_pages",
          "vectors": "flip", "pack_index": "flip", "remote_list": "delete", "sealed_pack": "flip",
          "active_pack": "truncate", "cold_pack": "delete"}
assert set(DAMAGE) == set(CORRUPT_KINDS)


@pytest.fixture(autouse=True)
def _restore_segment_size() -> Iterator[None]:
    """The campaign's stores rotate the log every few KiB by setting a class attribute in this process
    (the parent opens stores too): put it back, or every later test would run with tiny segments."""
    from maif.storage.engine import MAIFStorage

    saved = MAIFStorage.wal_segment_bytes_max
    yield
    MAIFStorage.wal_segment_bytes_max = saved


def campaign_seed() -> int:
    return int(os.environ.get("MAIF_FAULT_SEED", "20261212"))


@pytest.mark.slow
def test_short_fault_campaign_loses_nothing_and_names_all_damage(tmp_path: Path) -> None:
    seed = campaign_seed()
    campaign = Campaign(tmp_path, seed, ("kill", "corrupt"), rounds_per_directory=KILL_ROUNDS,
                        max_delay_s=0.4)
    with campaign:
        for _ in range(KILL_ROUNDS):
            campaign.run_round(corrupt=False)
        for kind in CORRUPT_KINDS:
            campaign.run_round(corrupt=True, kind=kind, mode=DAMAGE[kind])
    tally = campaign.tally
    context = f"campaign seed {seed}: {tally.violations[:5]}"
    assert tally.kills == KILL_ROUNDS
    assert tally.writes_acked > KILL_ROUNDS * 10, "the children should have acknowledged writes before dying"
    assert sum(sum(modes.values()) for modes in tally.corruptions.values()) == len(CORRUPT_KINDS), \
        tally.corruptions
    assert tally.acknowledged_lost == 0, context
    assert tally.deletes_undone == 0, context
    assert tally.garbage == 0, context
    assert tally.silently_dropped == 0, context
    assert not tally.violations, context


# Damage the long campaign found the engine did not survive (issue 12; fixed: each is now a regression
# test).
@pytest.mark.slow
@pytest.mark.parametrize(("kind", "mode"), [
    ("pack_index", "truncate_inside_entry"),  # was a "torn tail": the sealed packs' chunks were forgotten
    ("remote_list", "truncate"),  # derived, yet the store refused to open, even with repair=True
    ("wal_middle", "delete_segment"),  # was a log gap: IntegrityError, even with repair=True
])
def test_damage_the_long_campaign_found(tmp_path: Path, kind: str, mode: str) -> None:
    campaign = Campaign(tmp_path, campaign_seed(), ("corrupt",))
    with campaign:
        for _ in range(3):  # three copies of one template, each damaged at another offset
            campaign.run_round(corrupt=True, kind=kind, mode=mode)
    assert not campaign.tally.violations, campaign.tally.violations[:3]
