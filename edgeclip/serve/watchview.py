"""``edgeclip serve`` with a watch configuration (the ``watch`` serve option): the watcher's cameras, regions
and states over HTTP.

Routes (token as for every other route)::

    GET /v1/watch                     every camera with its regions: place (pixels), state, scores, counters
    GET /v1/watch/{camera}            one camera
    GET /v1/watch/{camera}/frame.jpg  the camera's newest frame (the page draws the regions over it)

``/metrics`` gains per-camera and per-region families (``edgeclip_watch_*``): frames per second, frames
dropped, reconnects, up; crops classified, skipped without motion, dropped, classifications per second,
decision latency (p50, p95) and the current state (1 for the state a region is in).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import RequestError
from ..watch import Watcher
from .metrics import Registry, _Family, _labels, _number

Rows = Iterable[tuple[tuple[str, ...], float | None]]


class RowFamily(_Family):
    """A metric family whose labelled values are read from ``rows()`` when scraped."""

    def __init__(self, name: str, help_text: str, kind: str, labelnames: tuple[str, ...],
                 rows: Callable[[], Rows]) -> None:
        super().__init__(name, help_text, labelnames)
        self.kind, self.rows = kind, rows

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(float(v))}" for k, v in self.rows()
                if v is not None]


def register_watch_metrics(registry: Registry, watcher: Watcher) -> None:
    """Add the ``edgeclip_watch_*`` families to a service's registry."""
    def cams() -> list[Any]:
        with watcher._lock:
            return list(watcher.cameras.values())

    def per_camera(fn: Callable[[Any], float | None]) -> Callable[[], Rows]:
        return lambda: [((c.name,), fn(c)) for c in cams()]

    def per_region(fn: Callable[[Any], float | None]) -> Callable[[], Rows]:
        return lambda: [((c.name, r.name), fn(r)) for c in cams() for r in c.regions]

    def latency() -> Rows:
        for c in cams():
            for r in c.regions:
                summary = r.latency.summary_ms(list(r.latency.recent))  # once per region and scrape
                for q, quantile in (("p50", "0.5"), ("p95", "0.95")):
                    ms = summary[q]
                    yield (c.name, r.name, quantile), None if ms is None else ms / 1000

    def states() -> Rows:
        for c in cams():
            for r in c.regions:
                for name in r.names + ["unknown"]:
                    yield (c.name, r.name, name), float(r.state.label == name)

    cam, reg = ("camera",), ("camera", "region")
    add = registry.add
    add(RowFamily("edgeclip_watch_camera_up", "1 while the camera streams", "gauge", cam, per_camera(lambda c: c.up)))
    add(RowFamily("edgeclip_watch_camera_fps", "frames taken per second (recent)", "gauge", cam,
                  per_camera(lambda c: c.fps())))
    add(RowFamily("edgeclip_watch_camera_frames_total", "frames read from the camera", "counter", cam,
                  per_camera(lambda c: c.capture.captured)))
    add(RowFamily("edgeclip_watch_camera_frames_dropped_total", "frames replaced before the inference thread took them",
                  "counter", cam, per_camera(lambda c: c.mailbox.dropped)))
    add(RowFamily("edgeclip_watch_camera_reconnects_total", "reconnections of the camera", "counter", cam,
                  per_camera(lambda c: c.capture.reconnects)))
    add(RowFamily("edgeclip_watch_region_classified_total", "crops of the region classified", "counter", reg,
                  per_region(lambda r: r.classified)))
    add(RowFamily("edgeclip_watch_region_motion_skipped_total", "frames the region skipped without motion",
                  "counter", reg, per_region(lambda r: r.motion_skipped)))
    add(RowFamily("edgeclip_watch_region_dropped_total", "crops dropped (stale, or replaced by a newer one)",
                  "counter", reg, per_region(lambda r: r.dropped)))
    add(RowFamily("edgeclip_watch_region_fps", "classifications of the region per second (recent)", "gauge", reg,
                  per_region(lambda r: r.fps())))
    add(RowFamily("edgeclip_watch_region_latency_seconds", "frame captured to state decided (recent)", "gauge",
                  reg + ("quantile",), latency))
    add(RowFamily("edgeclip_watch_region_state", "1 for the state the region is in", "gauge",
                  reg + ("state",), states))
    add(RowFamily("edgeclip_watch_encoder_calls_total", "encoder calls (one per tick, every due region)", "counter",
                  (), lambda: [((), watcher.encoder_calls)]))
    add(RowFamily("edgeclip_watch_crops_total", "region crops classified", "counter", (),
                  lambda: [((), watcher.crops)]))
    add(RowFamily("edgeclip_watch_sink_overflow_total", "events a full sink queue dropped", "counter", ("sink",),
                  lambda: [((f"{s.kind}:{s.name}",), s.overflow) for s in watcher.sinks]))


def watch_routes(watcher: Watcher) -> list[Route]:
    """The ``/v1/watch`` routes."""
    def camera_of(request: Request) -> Any:
        name = request.path_params["camera"]
        cam = watcher.camera(name)
        if cam is None:
            raise RequestError(f"no camera {name!r}; GET /v1/watch lists them", 404)
        return cam

    async def overview(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(watcher.status))

    async def one(request: Request) -> Response:
        cam = camera_of(request)
        return JSONResponse(await run_in_threadpool(cam.status))

    async def frame(request: Request) -> Response:
        cam = camera_of(request)
        got = await run_in_threadpool(cam.jpeg)
        if got is None:
            raise RequestError(f"camera {cam.name!r} has no frame yet; retry in a moment", 503)
        return Response(got[1], media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Frame": str(got[0])})

    return [Route("/v1/watch", overview, methods=["GET"]),
            Route("/v1/watch/{camera}", one, methods=["GET"]),
            Route("/v1/watch/{camera}/frame.jpg", frame, methods=["GET"])]
