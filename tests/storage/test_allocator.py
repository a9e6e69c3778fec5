"""`bound_allocator_retention` makes freed megabyte buffers go back to the system (docs/adr/0083).

A child process allocates 32 buffers of 4 MiB on a worker thread, with small objects between them (as a
server's requests leave them), frees the buffers and reports how much of its resident memory went back.
With glibc's defaults about 8 of the 128 MiB do (the threshold has grown past 4 MiB and the buffers sit
in the thread's heap arena); with the bound all of them must.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

CHILD = """
import sys, threading
from maif.storage.allocator import bound_allocator_retention

def resident() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")

if sys.argv[1] == "bound":
    assert bound_allocator_retention()

def work(out: list) -> None:
    first = bytearray(4 << 20)
    del first  # glibc's dynamic threshold grows past 4 MiB here
    buffers = []
    for _ in range(32):
        buffers.append(bytearray(4 << 20))
        buffers[-1][::4096] = b"x" * 1024  # touch every page
        out.append(bytearray(100))
    before = resident()
    del buffers
    out.append(before - resident())

results: list = []
thread = threading.Thread(target=work, args=(results,))
thread.start()
thread.join()
print(results[-1] >> 20)
"""


def _returned_mib(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the bound is a glibc malloc setting")
def test_freed_buffers_go_back_to_the_system() -> None:
    assert _returned_mib("bound") >= 120  # of 128 MiB freed


def test_elsewhere_it_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from maif.storage import allocator

    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.bound_allocator_retention() is False
