"""A JWKS document served on 127.0.0.1 at any path, as an identity provider (or an attacker) serves keys;
``hits`` counts the requests, so a test can prove a verifier never fetched it."""

from __future__ import annotations

import http.server
import threading
from typing import Any


class JWKSServer:
    """``base``: the server's URL; ``url``: ``base + "/jwks"``."""

    def __init__(self, document: bytes) -> None:
        self.hits = 0
        self.document = document
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
