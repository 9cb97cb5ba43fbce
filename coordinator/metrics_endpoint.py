"""The HTTP exporter (/metrics) of a Prometheus registry, shared by both ends: the
coordinator's metrics (coordinator/runtime/metrics.py) and a participant's
(participant_sdk/metrics.py). It lives here, next to the other code both ends share,
so that a coordinator node does not import the participant SDK to serve its metrics.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsEndpoint"]


class MetricsEndpoint:
    """Serves ``self.registry`` over HTTP (/metrics): shared by the participant's and
    the coordinator's metrics."""

    registry: CollectorRegistry
    _server: Any = None

    def serve(self, address: str) -> int:
        """An HTTP exporter on ``address`` (HOST:PORT; port 0 picks one); returns the port."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
