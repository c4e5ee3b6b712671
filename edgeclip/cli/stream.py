"""``edgeclip stream``: classify a camera, stream, video file or image folder live (torch-free, headless)."""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from .options import add_backend_options, open_classifier, providers_of

EPILOG = """\
sources:
  0, /dev/video0           camera (V4L2); --width/--height/--fps are requested from it
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
    p = sub.add_parser("stream", help="classify a camera, stream, video or image folder live",
                       description="Classify frames live from a camera, network stream, video file or image "
                                   "folder. A slow model drops stale frames instead of queueing them; lost "
                                   "cameras and streams are reopened with exponential backoff.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--source", "-s", required=True, help="camera, URL, GStreamer pipeline, file or folder (below)")

    g = p.add_argument_group("source")
    g.add_argument("--width", type=int, default=None, help="capture width for cameras / presets / synthetic")
    g.add_argument("--height", type=int, default=None, help="capture height for cameras / presets / synthetic")
    g.add_argument("--fps", type=float, default=None,
                   help="camera frame rate to request; for files, folders and synthetic the playback rate "
                        "(plays them in real time, dropping frames a slow model cannot keep up with)")
    g.add_argument("--realtime", action="store_true",
                   help="play a file/folder at its own frame rate (folders: 10 fps) instead of as fast as possible")
    g.add_argument("--loop", action="store_true", help="restart a file or folder at its end")
    g.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds before a silent network stream counts as lost (default 10); an MJPEG "
                        "stream must also deliver each whole frame within it (slow trickles count as lost)")
    g.add_argument("--max-part-size", type=_size, default=None, metavar="SIZE",
                   help="largest MJPEG frame accepted from mjpeg+http:// sources, e.g. 64M (default 32M); a "
                        "bigger one counts as a lost source and is reconnected")
    g.add_argument("--reconnect-max", type=float, default=30.0,
                   help="longest wait between reconnection attempts, in seconds; waits start at "
                        "--reconnect-min and double (default 30)")
    g.add_argument("--reconnect-min", type=float, default=0.5, help="first reconnection wait in seconds (0.5)")
    g.add_argument("--give-up-after", type=float, default=0.0,
                   help="end (exit 1) after this many seconds without frames from a lost source (0: never)")

    g = p.add_argument_group("processing")
    g.add_argument("--fps-limit", type=float, default=0.0,
                   help="classify at most this many frames per second (the newest frame each time); 0: no limit")
    g.add_argument("--batch", type=int, default=1,
                   help="frames kept waiting for the model and classified together (default 1: only the newest)")
    g.add_argument("--max-frames", type=int, default=0, help="stop after reading this many frames (0: no limit)")
    g.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    g.add_argument("--roi", default=None, metavar="X,Y,W,H",
                   help="classify only this region: pixels (100,50,320,240) or fractions (0.25,0.25,0.5,0.5)")

    g = p.add_argument_group("decisions")
    g.add_argument("--half-life", default="0.5s",
                   help="EMA smoothing half-life of the probabilities: seconds (0.5s, 500ms) or frames (5f); "
                        "0 disables smoothing (default 0.5s)")
    g.add_argument("--threshold", type=float, default=0.0,
                   help="report 'unknown' when the best smoothed probability is below this (default 0: never); "
                        "for a sigmoid-scored bundle (SigLIP) it is that label's own probability of matching")
    g.add_argument("--hysteresis", type=float, default=0.05,
                   help="a new label must beat the current one by this much probability (default 0.05)")
    g.add_argument("--min-frames", type=int, default=3,
                   help="... for this many consecutive classified frames (default 3)")
    g.add_argument("--top-k", type=int, default=3, help="labels listed in label events (default 3)")

    g = p.add_argument_group("outputs")
    g.add_argument("--jsonl", default="-", metavar="FILE", help="JSON-lines events to this file ('-': stdout)")
    g.add_argument("--append", action="store_true", help="append to --jsonl instead of replacing it")
    g.add_argument("--every-frame", action="store_true", help="also emit one 'frame' event per classified frame")
    g.add_argument("--summary-every", type=float, default=10.0,
                   help="seconds between 'summary' events with fps, latency p50/p95, drops, memory (0: only at the end)")
    g.add_argument("--video-out", default=None, metavar="FILE",
                   help="write classified frames with label and score drawn on them (.mp4, .avi, .mkv)")
    g.add_argument("--video-fps", type=float, default=None,
                   help="frame rate of --video-out (default: --fps-limit for a paced source, else the source's rate)")
    g.add_argument("--show", action="store_true", help="show an annotated window (needs a display; q quits)")

    g = p.add_argument_group("live relabelling")
    g.add_argument("--labels-watch", default=None, metavar="FILE",
                   help="labels file (.txt/.csv/.json) applied at start and re-embedded on the device whenever it "
                        "changes (polled) or on SIGHUP, without restarting")
    g.add_argument("--watch-interval", type=float, default=1.0, help="seconds between checks of --labels-watch")
    g.add_argument("--templates", default=None, metavar="SET|FILE",
                   help="prompt templates for relabelling (default: the ones the bundle was made with)")
    add_backend_options(p)
    p.set_defaults(handler=run_stream)


def _size(text: str) -> int:
    from .classify import parse_size

    return parse_size(text)


def _options(args: argparse.Namespace) -> Any:
    from ..errors import OptionError
    from ..stream.decisions import HalfLife, Roi
    from ..stream.loop import ReconnectPolicy, StreamOptions

    if args.video_fps is not None and not args.video_out:
        raise OptionError("--video-fps sets the rate of --video-out; pass --video-out FILE too, or drop it")
    if args.watch_interval <= 0:
        raise OptionError(f"--watch-interval must be > 0, got {args.watch_interval}")
    if args.read_timeout <= 0:
        raise OptionError(f"--read-timeout must be > 0, got {args.read_timeout}")
    if args.templates and not args.labels_watch:
        raise OptionError("--templates is used when relabelling; pass --labels-watch FILE too, or drop it")
    return StreamOptions(
        batch=args.batch, fps_limit=args.fps_limit, max_frames=args.max_frames, duration=args.duration,
        roi=Roi.parse(args.roi) if args.roi else None, threshold=args.threshold,
        half_life=HalfLife.parse(args.half_life), margin=args.hysteresis, min_frames=args.min_frames,
        summary_every=args.summary_every, every_frame=args.every_frame, top_k=args.top_k, loop=args.loop,
        reconnect=ReconnectPolicy(args.reconnect_min, args.reconnect_max, args.give_up_after))


def _check_source(args: argparse.Namespace, spec: Any) -> None:
    from ..errors import OptionError

    preset = args.source.strip().lower().startswith(("csi://", "usb://"))
    fixed = spec.kind in ("url", "mjpeg") or (spec.kind == "gstreamer" and not preset)
    if args.fps and fixed:
        raise OptionError(f"--fps cannot be set on a {spec.kind} source (it sends frames at its own rate); "
                          f"use --fps-limit to classify fewer frames")
    if (args.width or args.height) and (fixed or spec.kind in ("file", "folder")):
        raise OptionError(f"--width/--height apply to cameras, csi:// and usb:// presets and synthetic sources, "
                          f"not to a {spec.kind}; use --roi to classify part of the frame")
    if spec.live and args.realtime:
        raise OptionError(f"--realtime plays files and folders at their rate; a {spec.kind} source is already "
                          f"real time, drop --realtime")
    if spec.live and args.loop:
        raise OptionError("--loop replays files and folders; live sources reconnect by themselves, drop --loop")


def _require_opencv(args: argparse.Namespace, spec: Any) -> None:
    """ONNX Runtime always; OpenCV for cameras, video files, network streams, --video-out and --show (image
    folders, mjpeg+http:// and synthetic:// sources decode with Pillow when OpenCV is absent)."""
    from ..extras import require, require_onnxruntime

    require_onnxruntime("edgeclip stream")
    if spec.kind not in ("folder", "mjpeg", "synthetic"):
        require("opencv", what=f"a {spec.kind} source (--source)")
    if args.video_out:
        require("opencv", what="--video-out")
    if args.show:
        require("opencv", what="--show")


def run_stream(args: argparse.Namespace) -> int:
    from ..stream.relabel import LabelReloader
    from ..sources import parse_source
    from ..stream.loop import CLEAN_END, StreamPipeline
    from ..stream.outputs import AnnotatedVideo, JsonLinesSink, Window

    options = _options(args)
    spec = parse_source(args.source, args.width, args.height, args.fps, args.read_timeout, args.realtime,
                        max_part_bytes=args.max_part_size)
    _check_source(args, spec)
    _require_opencv(args, spec)
    window = Window() if args.show else None
    clf = open_classifier(args)
    if not args.quiet:
        print(f"edgeclip stream: image encoder {clf.choice.describe()}", file=sys.stderr)
    reloader = (LabelReloader(clf.bundle, args.labels_watch, args.templates, args.watch_interval,
                              providers=providers_of(args) or clf.text_providers) if args.labels_watch else None)
    # without --video-fps the pipeline picks the rate (--fps-limit for a paced source, else the source's own)
    video = AnnotatedVideo(args.video_out, args.video_fps) if args.video_out else None
    sink = JsonLinesSink(args.jsonl, append=args.append)
    pipeline = StreamPipeline(clf, spec, options, sink=sink, video=video, window=window, reloader=reloader)

    def on_stop(signum: int, _frame: Any) -> None:
        if pipeline.stop_requested:  # a second signal: stop now
            raise KeyboardInterrupt
        pipeline.request_stop(signal.Signals(signum).name)

    def on_hup(_signum: int, _frame: Any) -> None:
        if reloader is not None:
            reloader.request("sighup")
        else:
            print("edgeclip stream: SIGHUP ignored (no --labels-watch file to re-read)", file=sys.stderr)

    handlers = {signal.SIGINT: on_stop, signal.SIGTERM: on_stop}
    if hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = on_hup
    previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    try:
        end = pipeline.run()
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        if video is not None:
            video.close()
        if window is not None:
            window.close()
        sink.close()
    if not args.quiet:
        lat = end["latency_ms"]
        print(f"edgeclip stream: {end['reason']}: {end['inferred']} frames classified of {end['captured']} read "
              f"({end['dropped']} dropped, {end['reconnects']} reconnects) with {clf.encoder.name}; "
              f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms; {end['inference_fps']:.1f} fps",
              file=sys.stderr)
    if end["reason"] in CLEAN_END:
        return 0
    if end.get("error"):
        print(f"edgeclip stream: error: {end['error']}", file=sys.stderr)
    return 1
