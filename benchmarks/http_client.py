"""A minimal HTTP/1.1 keep-alive client for the benchmarks' load generators and stub clients (asyncio
streams): httpx costs about a millisecond of CPU per request (its pool scans every connection per request),
which on this 2-core machine starves the system under test. Not a general client: Content-Length bodies
only, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio


class HTTPConnection:
    """One keep-alive connection, opened on the first request; one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:  # the server closed the connection: counted as a failed request
            self.close()
            raise ConnectionResetError("the server closed the connection before answering")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


class HTTPPool:
    """At most ``connections_max`` keep-alive connections to the server of ``http://host:port/path``
    (``path`` kept as :attr:`path`), the most recently idle reused first; a connection that fails is
    dropped, not reused."""

    def __init__(self, url: str, connections_max: int) -> None:
        address, _, path = url.removeprefix("http://").partition("/")
        host, _, port = address.partition(":")
        self.host, self.port, self.path = host, int(port or 80), "/" + path
        self._idle: list[HTTPConnection] = []
        self._slots = asyncio.Semaphore(connections_max)

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        async with self._slots:
            connection = self._idle.pop() if self._idle else HTTPConnection(self.host, self.port)
            try:
                answer = await connection.request(method, path, headers or {}, body)
            except BaseException:
                connection.close()
                raise
            self._idle.append(connection)
            return answer
