"""``edgeclip stream``: classify a camera, stream, video file or image folder live (torch-free, headless)."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from .options import add_load_options, add_options, load_options, options_from_args

EPILOG = """\
sources:
  0, /dev/video0           camera (V4L2); --width/--height/--fps are requested from it
                           (each kind takes only the source options that apply to it: edgeclip.tables)
  csi://0, usb://0         Jetson CSI camera (nvarguscamerasrc) / USB camera (v4l2src) via GStreamer
  gst:PIPELINE, 'a ! b'    raw GStreamer pipeline ending in appsink (needs an OpenCV with GStreamer)
  rtsp://..., http://...   network stream via OpenCV/FFmpeg (MJPEG over HTTP works too)
  mjpeg+http://...         multipart MJPEG over HTTP with edgeclip's own reader
  video.mp4, frames/       file or image folder: every frame classified, as fast as possible, unless
                           --fps/--realtime play it at a real-time rate
  synthetic://640x480      generated frames (smoke tests, soak runs)

events (JSON lines): start, label (label changes), frame (--every-frame), summary (every --summary-every s),
source_lost, reconnect (with gap_s), source_gone, relabel, relabel_error, end. Each has "time" (UTC, the
frame's capture time for label/frame) and "frame" (the source frame number).

signals: SIGINT/SIGTERM stop cleanly (outputs flushed, exit 0); SIGHUP re-reads --labels-watch.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from .. import SourceOptions, StreamOptions, StreamOutputs

    p = sub.add_parser("stream", help="classify a camera, stream, video or image folder live",
                       description="Classify frames live from a camera, network stream, video file or image "
                                   "folder. A slow model drops stale frames instead of queueing them; lost "
                                   "cameras and streams are reopened with exponential backoff.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--source", "-s", required=True, help="camera, URL, GStreamer pipeline, file or folder (below)")
    add_options(p, SourceOptions, groups={None: "source"})
    add_options(p, StreamOptions)
    add_options(p, StreamOutputs)
    add_load_options(p)
    p.set_defaults(handler=run_stream)


def run_stream(args: argparse.Namespace) -> int:
    from .. import SourceOptions, StreamOptions, StreamOutputs, stream
    from ..extras import require_onnxruntime

    require_onnxruntime("edgeclip stream")
    outputs = options_from_args(StreamOutputs, args)
    live = stream(args.bundle, args.source, options_from_args(StreamOptions, args),
                  source_options=options_from_args(SourceOptions, args), load_options=load_options(args),
                  outputs=outputs)
    if not args.quiet:
        print(f"edgeclip stream: image encoder {live.classifier.choice.describe()}", file=sys.stderr)

    def on_stop(signum: int, _frame: Any) -> None:
        if live.stop_requested:  # a second signal: stop now
            raise KeyboardInterrupt
        live.stop(signal.Signals(signum).name)

    def on_hup(_signum: int, _frame: Any) -> None:
        if not live.reload_labels("sighup"):
            print("edgeclip stream: SIGHUP ignored (no --labels-watch file to re-read)", file=sys.stderr)

    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = on_hup
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        end = live.run(outputs)
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
    if not args.quiet:
        lat = end["latency_ms"]
        print(f"edgeclip stream: {end['reason']}: {end['inferred']} frames classified of {end['captured']} read "
              f"({end['dropped']} dropped, {end['reconnects']} reconnects) with {live.classifier.encoder.name}; "
              f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms; {end['inference_fps']:.1f} fps",
              file=sys.stderr)
    if end["reason"] in live.CLEAN_END:
        return 0
    if end.get("error"):
        print(f"edgeclip stream: error: {end['error']}", file=sys.stderr)
    return 1
