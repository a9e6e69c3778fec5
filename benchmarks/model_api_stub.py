"""A stand-in for a remote model API, for benchmarks/cluster_bench.py: an HTTP/1.1 server on 127.0.0.1 that
answers every request after a fixed delay (default 20 ms), with keep-alive. It prints its port and serves
until killed.

    python benchmarks/model_api_stub.py [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio

_REQUEST_HEAD_BYTES_MAX = 16384
_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nanswer"


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _REQUEST_HEAD_BYTES_MAX:
                break
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(min(length, _REQUEST_HEAD_BYTES_MAX))
            await asyncio.sleep(delay_s)
            writer.write(_ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=float, default=20.0)
    options = parser.parse_args()
    server = await asyncio.start_server(lambda r, w: serve(r, w, options.delay_ms / 1000), "127.0.0.1", 0,
                                        backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
