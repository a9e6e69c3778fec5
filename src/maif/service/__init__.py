"""The HTTP service (FastAPI on uvicorn): authenticated /v1 API, Prometheus metrics, health endpoints.

    from maif.service import create_app
    app = create_app(storage, security_manager)

``maif serve --host 127.0.0.1 --port 8080 --config maif.json`` runs it (:mod:`maif.cli.serve`).
"""

from maif.service.app import create_app, openapi_document

__all__ = ["create_app", "openapi_document"]
