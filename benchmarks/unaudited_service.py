"""Benchmark peer only: the HTTP service with the gate's audit records switched off.

``benchmarks/service_bench.py --audit-compare`` runs this beside the real service, in the same run, so
the cost of auditing is a ratio of two measurements of one machine. The gate still decides every
request; it only stops recording the decisions. Never a way to run MAIF: an unaudited service breaks
the security model (docs/adr/0021), which is why this lives in benchmarks/ and nowhere in the package.

    python benchmarks/unaudited_service.py --host 127.0.0.1 --port P --config FILE
"""

from __future__ import annotations

from typing import Any

import typer

from maif.cli.serve import serve_command
from maif.security.gate import Gate


def _unrecorded(self: Gate, event: dict[str, Any], **options: Any) -> None:
    return None


async def _unrecorded_async(self: Gate, event: dict[str, Any], **options: Any) -> None:
    return None


if __name__ == "__main__":
    Gate._record = _unrecorded  # type: ignore[method-assign]
    Gate._record_async = _unrecorded_async  # type: ignore[method-assign]
    typer.run(serve_command)
