"""`dgl serve`'s `/metrics`: Prometheus text format (prometheus-client), one registry per app.

  dgl_requests_total{route,status}        answers, by route (the route's path; "other" for unknown paths) and status
  dgl_request_seconds{route}              latency histogram, from the request's arrival to its last byte
  dgl_shed_requests_total{route}          requests refused because the server was busy (503 + Retry-After)
  dgl_encoder_queue_depth                 encoder calls waiting (text queries and decoded uploads)
  dgl_decoder_restarts_total              decoder processes restarted after a hang or crash (uploads and posters)
  dgl_index_rows                          rows of the set served now
  dgl_index_info{generation,kind}         the set's generation and the index kind served now (value 1)
  dgl_index_switches_total                new generations switched in since start-up (`follow`)

Requests are counted by ASGI middleware around the whole app, so refusals (401, 400, 503) count too. The index,
queue and decoder values are read from the service when scraped, not copied. `/metrics` follows the server's
access rules: with a token it needs the token, like every route that tells something about the index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from dgl_deploy.retrieval.follow import IndexFollower

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds
STATIC_ROUTE = "/static/{name}"


class MetricSource(Protocol):
    """What the metrics read of the service (`serve_service.SearchService`) at scrape time."""

    follower: IndexFollower  # the state served: rows, generation, index kind, switches

    @property
    def encoder_queue_depth(self) -> int: ...

    @property
    def decoder_restarts(self) -> int: ...


class ServeMetrics:
    """The service's metrics: request counters and histograms, and the service's state read at scrape time."""

    def __init__(self, service: MetricSource) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dgl_requests", "HTTP answers by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("dgl_request_seconds", "HTTP request latency (arrival to last byte) by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shed = Counter("dgl_shed_requests", "requests refused because the server was busy (503 + Retry-After)",
                            ["route"], registry=self.registry)
        self.registry.register(_ServiceCollector(service))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status == 503:
            self.shed.labels(route).inc()

    def render(self) -> tuple[bytes, str]:
        """(the text exposition, its content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ServiceCollector:
    """The service's state as metrics, read when scraped."""

    def __init__(self, service: MetricSource) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service, served = self.service, self.service.follower.current
        yield GaugeMetricFamily("dgl_encoder_queue_depth", "encoder calls waiting", value=service.encoder_queue_depth)
        yield CounterMetricFamily("dgl_decoder_restarts", "decoder processes restarted after a hang or crash",
                                  value=service.decoder_restarts)
        yield GaugeMetricFamily("dgl_index_rows", "rows of the embedding set served", value=served.rows)
        yield InfoMetricFamily("dgl_index", "the generation of the set and the index kind served",
                               value={"generation": served.generation or "", "kind": served.kind})
        yield CounterMetricFamily("dgl_index_switches", "new generations switched in since start-up",
                                  value=service.follower.switches)


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by route (`routes`: the app's route paths, read once)."""

    def __init__(self, app: Any, metrics: ServeMetrics, routes: Callable[[], set[str]]) -> None:
        self.app, self.metrics = app, metrics
        self._routes, self._known = routes, None  # type: Callable[[], set[str]], set[str] | None

    def route(self, path: str) -> str:
        """The label of `path`: a route's path, STATIC_ROUTE, or "other" (bounded: paths come from clients)."""
        if self._known is None:
            self._known = self._routes()
        if path in self._known:
            return path
        return STATIC_ROUTE if path.startswith("/static/") else "other"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(self.route(scope["path"]), status, time.perf_counter() - started)


__all__ = ["ServeMetrics", "RequestMetrics"]
