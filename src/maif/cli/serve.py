"""``maif serve``: run the HTTP service on uvicorn over a store and a security manager from one config.

The config file (JSON or TOML) holds the ``storage`` and ``security`` sections and an optional
``service`` section: ``security_data_dir`` (keystore and audit log; default <data_dir>/security),
``export_key_file`` (raw 32-byte Ed25519 seed, hex; created owner-only when missing), ``log_level``,
``graceful_shutdown_s``, ``embedding_dimensions`` (the one vector size the store accepts; 384 is what
the agent runtime's default embedder makes), ``max_concurrent_requests`` (more get 503; at most
``limits.service_concurrent_requests_max``), and ``tracing`` (OpenTelemetry over OTLP/HTTP, see
maif.service.tracing; the standard OTEL_EXPORTER_OTLP_* variables turn it on too). The master key comes
from MAIF_MASTER_KEY, else ``security.master_key_file`` (default ~/.config/maif/master.key; a key file
inside ``data_dir`` is refused, docs/adr/0081); MAIF_METRICS_TOKEN, when set, is the bearer token
GET /metrics requires (without it, an API token that may read the store's statistics;
``unsafe_anonymous_metrics = true`` serves /metrics to anyone).

Slow and idle clients are bounded: ``keep_alive_timeout_s`` (an idle kept-alive connection is closed,
default 5), ``header_timeout_s`` (a request head not complete in time closes the connection, default 10),
``body_read_timeout_s`` (an incomplete body that sends nothing this long is answered 408, default 30),
``body_total_timeout_s`` and ``body_bytes_per_s_min`` (a body not complete after this much waiting plus
1 s per that many bytes received is answered 408, so a drip-feeding client is cut off: default 60 s and
8 KiB/s, see maif.service.middleware),
``connections_per_client_max`` (open connections per peer IP address, default
``limits.service_connections_per_client_max``; behind a reverse proxy raise it to
``max_concurrent_requests``) and ``request_head_bytes_max`` (default
``limits.service_request_head_bytes_max``). See maif.service.connections.

On start it prints one line with the URL it listens on, and warns on stderr when no issuer is configured
(``security.oauth_providers``): every /v1 call is then refused 401, and docs/first-write.md shows how to
get a token (``maif dev-issuer`` for local development).

Shutdown (SIGTERM/SIGINT): uvicorn stops accepting, lets in-flight requests finish (up to
``graceful_shutdown_s``), then the service waits for every write in flight to be acknowledged, and the
store and manager close (the store checkpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif import limits
from maif.cli.exit_codes import ExitCode
from maif.config import SecurityConfig, StorageConfig, load_section
from maif.errors import ConfigError, MAIFError, StoreLockedError
from maif.service.tracing import TracingConfig, build_tracer_provider


class ServiceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    security_data_dir: str | None = None
    export_key_file: str | None = None
    log_level: str = "info"
    graceful_shutdown_s: float = 30.0
    embedding_dimensions: int = 384
    max_concurrent_requests: int = limits.service_concurrent_requests_max
    keep_alive_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_read_timeout_s: float = 30.0
    body_total_timeout_s: float = 60.0
    body_bytes_per_s_min: int = 8 * 1024
    connections_per_client_max: int = limits.service_connections_per_client_max
    request_head_bytes_max: int = limits.service_request_head_bytes_max
    unsafe_anonymous_metrics: bool = False
    tracing: TracingConfig | None = None


def _service_section(path: Path | None) -> ServiceConfig:
    if path is None:
        return ServiceConfig()
    text = path.read_bytes()
    try:
        raw = tomllib.loads(text.decode()) if path.suffix == ".toml" else json.loads(text)
        section = msgspec.convert(raw.get("service", {}), ServiceConfig)
    except (ValueError, UnicodeDecodeError, msgspec.ValidationError, AttributeError) as error:
        raise ConfigError(f"invalid service section in {path}: {error}") from error
    if not 1 <= section.max_concurrent_requests <= limits.service_concurrent_requests_max:
        raise ConfigError(
            f"service.max_concurrent_requests must be 1 to {limits.service_concurrent_requests_max}"
        )
    _check_connection_bounds(section)
    return section


def _check_connection_bounds(section: ServiceConfig) -> None:
    timeouts = ("keep_alive_timeout_s", "header_timeout_s", "body_read_timeout_s", "body_total_timeout_s")
    for name in timeouts:
        if not 0 < getattr(section, name) <= limits.service_timeout_s_max:  # also refuses NaN
            raise ConfigError(f"service.{name} must be above 0 and at most {limits.service_timeout_s_max}")
    if not 1 <= section.body_bytes_per_s_min <= limits.service_part_bytes_max:
        raise ConfigError(f"service.body_bytes_per_s_min must be 1 to {limits.service_part_bytes_max}")
    if not 1 <= section.connections_per_client_max <= limits.service_concurrent_requests_max:
        raise ConfigError(
            f"service.connections_per_client_max must be 1 to {limits.service_concurrent_requests_max}"
        )
    if not 16 * 1024 <= section.request_head_bytes_max <= limits.service_request_head_bytes_max:
        raise ConfigError(
            f"service.request_head_bytes_max must be 16384 to {limits.service_request_head_bytes_max}"
        )


def load_export_key(path: Path) -> Ed25519PrivateKey:
    """The export signing key from ``path`` (hex seed), created owner-only when missing."""
    from maif.format.signing import load_or_create_seed_key

    return load_or_create_seed_key(path, "export key")


async def run_service(host: str, port: int, config: Path | None) -> None:
    """Open the store and the manager, serve until a signal, drain writes, close everything."""
    import uvicorn

    from maif.security.manager import create_maif_security_manager
    from maif.service.app import create_app
    from maif.service.connections import guarded_protocol
    from maif.service.middleware import configure_json_logging
    from maif.storage.allocator import bound_allocator_retention
    from maif.storage.engine import create_maif_storage

    bound_allocator_retention()  # freed 4 MiB parts go back to the system (docs/adr/0083)
    storage_config = load_section(StorageConfig, config)
    security_config = load_section(SecurityConfig, config)
    service_config = _service_section(config)
    configure_json_logging(service_config.log_level)
    if not security_config.oauth_providers:
        typer.echo(NO_ISSUER_WARNING, err=True)
    data_dir = Path(storage_config.data_dir)
    security_dir = Path(service_config.security_data_dir or data_dir / "security")
    tracer_provider = build_tracer_provider(service_config.tracing)
    storage = await create_maif_storage(storage_config)
    manager = None
    try:
        manager = create_maif_security_manager(
            security_config, data_dir=security_dir, protected_directories=[data_dir]
        )
        key_file = Path(service_config.export_key_file or security_dir / "export.key")
        app = create_app(
            storage,
            manager,
            export_signing_key=load_export_key(key_file),
            embedding_dimensions=service_config.embedding_dimensions,
            tracer_provider=tracer_provider,
            metrics_token=os.environ.get("MAIF_METRICS_TOKEN") or None,
            unsafe_anonymous_metrics=service_config.unsafe_anonymous_metrics,
            body_read_timeout_s=service_config.body_read_timeout_s,
            body_total_timeout_s=service_config.body_total_timeout_s,
            body_bytes_per_s_min=service_config.body_bytes_per_s_min,
        )
        server = _draining_server_class()(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                lifespan="off",
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=int(service_config.graceful_shutdown_s),
                limit_concurrency=service_config.max_concurrent_requests,
                http=guarded_protocol(
                    service_config.header_timeout_s,
                    service_config.connections_per_client_max,
                    service_config.request_head_bytes_max,
                ),
                timeout_keep_alive=service_config.keep_alive_timeout_s,  # type: ignore[arg-type]
                proxy_headers=False,  # nothing reads the client address; no header may rewrite it
            )
        )
        # Everything built so far (modules, the app, the store's and manager's objects) lives as long as
        # the process: moved out of the collector's generations, a full collection no longer rescans it
        # while requests are served (docs/adr/0089).
        gc.collect()
        gc.freeze()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, server.request_exit)
        try:
            await server.serve()
        finally:
            gc.unfreeze()  # a process that serves again (tests do) freezes its heap anew
        await app.state.service.drain()
    finally:
        try:
            await storage.close()
        finally:
            if manager is not None:
                manager.close()
            if tracer_provider is not None:
                tracer_provider.shutdown()  # exports the spans still queued


NO_ISSUER_WARNING = (
    "maif serve: warning: no OAuth issuer is configured (security.oauth_providers is empty), so every /v1 "
    "call will be refused with 401. To try the service locally, see docs/first-write.md "
    "(`maif dev-issuer` mints development tokens)."
)


def listening_url(host: str, port: int) -> str:
    """The URL a client uses for a server bound to ``host``:``port`` (IPv6 addresses in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop where it is installed (every platform but Windows): the service's one loop
    thread is its bottleneck, and uvloop's transports and timers cost less of it (docs/adr/0087)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _draining_server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, except that a signal only asks it to stop: uvicorn's own handlers re-raise the
        signal once serving ends, which would kill the process before the store closes. Once bound, it
        prints the URL it listens on (the real port, also when 0 was asked for)."""

        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            if self.started and self.servers and self.servers[0].sockets:
                port = self.servers[0].sockets[0].getsockname()[1]
                typer.echo(f"maif serve: listening on {listening_url(self.config.host, port)}")

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        def request_exit(self) -> None:
            self.should_exit = True

    return DrainingServer


def serve_command(
    host: Annotated[
        str, typer.Option(help="Address to bind (127.0.0.1 unless you mean to expose it).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8080,
    config: Annotated[
        Path | None, typer.Option(help="JSON or TOML config (storage, security, service).")
    ] = None,
) -> None:
    """Serve the authenticated HTTP API (/v1), /metrics, /healthz and /readyz."""
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(run_service(host, port, config))
    except MAIFError as error:
        typer.echo(f"maif serve: {error.diagnostics()}", err=True)
        code = ExitCode.STORE_LOCKED if isinstance(error, StoreLockedError) else ExitCode.USAGE_ERROR
        raise typer.Exit(int(code)) from error


__all__ = [
    "NO_ISSUER_WARNING",
    "ServiceConfig",
    "event_loop_factory",
    "listening_url",
    "load_export_key",
    "run_service",
    "serve_command",
]
