"""``edgeclip serve``: the HTTP service (REST API, live preview, label editing page) over a bundle."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from .options import add_backend_options, open_classifier

EPILOG = """\
endpoints (JSON; see docs/serve.md):
  GET  /                   the page: live preview, current label, labels editor, photo drop zone
  POST /v1/classify        image body (JPEG/PNG/WebP) or multipart field 'file'; ?top_k=N
  GET  /v1/labels          the labels in use;  PUT /v1/labels {"labels": [...]} (?persist=1: into the bundle)
  GET  /v1/status          model, batching, labels, live source
  GET  /v1/stream          server-sent events of the source's decisions     (with --source)
  GET  /v1/preview.mjpg    annotated frames (MJPEG), newest only             (with --source)
  GET  /healthz            liveness (no token);  GET /metrics  Prometheus text

token: clients send 'Authorization: Bearer TOKEN'; a browser opens http://HOST:PORT/?token=TOKEN once (a
cookie then carries it). Pass it with --token, --token-file or the EDGECLIP_TOKEN environment variable
(the last two keep it out of the process list).

examples:
  edgeclip serve bundle                                   # http://127.0.0.1:8080/, photos only
  edgeclip serve bundle --source 0                        # + a camera's live preview and events
  EDGECLIP_TOKEN=s3cret edgeclip serve bundle --source csi://0 --host 0.0.0.0
  curl --data-binary @photo.jpg 'http://127.0.0.1:8080/v1/classify?top_k=3'
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a bundle over HTTP: REST API, live preview and a page to edit labels",
                       description="Serve a bundle over HTTP: classify uploaded images (micro-batched), show a "
                                   "live source's preview and decisions, and edit the labels from a browser.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--source", "-s", default=None,
                   help="a live source as for `edgeclip stream` (camera, URL, file, folder, synthetic://WxH)")

    g = p.add_argument_group("network and access")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only); any other needs --token or "
                        "--insecure")
    g.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0: a free one, printed)")
    g.add_argument("--token", default=None, help="token every request but /healthz must carry (see below)")
    g.add_argument("--token-file", default=None, metavar="FILE", help="read the token from this file")
    g.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback address without a token (anyone who can reach it can "
                        "classify and change the labels)")

    g = p.add_argument_group("limits and batching")
    g.add_argument("--max-body-bytes", type=_size, default=20 * 2**20, metavar="SIZE",
                   help="largest request body, e.g. 20M (default 20M)")
    g.add_argument("--max-batch", type=int, default=8, help="largest micro-batch of concurrent requests (default 8)")
    g.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="how long a batch waits for requests still being decoded, in ms (default 2)")
    g.add_argument("--top-k", type=int, default=5, help="predictions per image unless ?top_k= says (default 5)")
    g.add_argument("--preview-fps", type=float, default=5.0,
                   help="most preview frames per second sent to each viewer (default 5)")

    g = p.add_argument_group("live source (with --source)")
    g.add_argument("--fps", type=float, default=None,
                   help="camera frame rate to request; for files, folders and synthetic frames the playback "
                        "rate (default: their own rate)")
    g.add_argument("--width", type=int, default=None, help="capture width for cameras / presets / synthetic")
    g.add_argument("--height", type=int, default=None, help="capture height for cameras / presets / synthetic")
    g.add_argument("--loop", action="store_true", help="restart a file or folder at its end")
    g.add_argument("--fps-limit", type=float, default=0.0,
                   help="classify at most this many frames per second (0: as many as the device can)")
    g.add_argument("--half-life", default="0.5s", help="EMA smoothing half-life of the probabilities (0.5s)")
    g.add_argument("--threshold", type=float, default=0.0, help="'unknown' below this smoothed probability (sigmoid bundles: the label's own)")
    add_backend_options(p)
    p.set_defaults(handler=run_serve)


def _size(text: str) -> int:
    from .classify import parse_size

    return parse_size(text)


def read_token(args: argparse.Namespace) -> str | None:
    """The token from --token, --token-file or EDGECLIP_TOKEN (at most one of them)."""
    from ..errors import OptionError

    given = [name for name, v in (("--token", args.token), ("--token-file", args.token_file)) if v]
    if len(given) > 1:
        raise OptionError("pass the token with --token or with --token-file, not both")
    if args.token_file:
        try:
            token = open(args.token_file, encoding="utf-8").read().strip()
        except OSError as exc:
            raise OptionError(f"--token-file {args.token_file}: cannot read it ({exc.strerror})") from None
        if not token:
            raise OptionError(f"--token-file {args.token_file}: the file is empty")
        return token
    if args.token is not None:
        if not args.token.strip():
            raise OptionError("--token is empty; pass a non-empty token")
        return args.token.strip()
    env = os.environ.get("EDGECLIP_TOKEN", "").strip()
    return env or None


def check_exposure(host: str, token: str | None, insecure: bool) -> str | None:
    """Refuse a non-loopback bind without a token (OptionError); the warning to print for --insecure."""
    from ..errors import OptionError
    from ..serve.app import is_loopback

    if is_loopback(host) or token:
        return None
    if not insecure:
        raise OptionError(f"--host {host} makes the service reachable from other machines: pass --token TOKEN "
                          f"(or --token-file, or EDGECLIP_TOKEN), or --insecure to serve without one")
    return (f"edgeclip serve: WARNING: serving on {host} without a token (--insecure): anyone who can reach this "
            f"port can classify images and change the labels")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv6 for addresses with ':')."""
    from ..errors import OptionError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it a
    # response written in two parts waits for the client's delayed ACK (~40 ms per request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        hint = "choose another --port (0: any free one)" if exc.errno in (98, 48, 10048) else "check --host"
        raise OptionError(f"cannot listen on {host}:{port} ({exc.strerror}); {hint}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run_serve(args: argparse.Namespace) -> int:
    from ..errors import OptionError
    from ..extras import require, require_onnxruntime

    require_onnxruntime("edgeclip serve")
    require("serve", what="edgeclip serve")
    if not 0 <= args.port <= 65535:
        raise OptionError(f"--port must be between 0 and 65535, got {args.port}")
    token = read_token(args)
    warning = check_exposure(args.host, token, args.insecure)

    import uvicorn

    from ..serve.app import LOOPBACK_HOSTS, create_app, is_loopback
    from ..stream.decisions import HalfLife
    from ..stream.loop import StreamOptions
    from ..sources import parse_source

    spec = stream_options = None
    if args.source is not None:
        spec = parse_source(args.source, args.width, args.height, args.fps)
        if spec.kind not in ("folder", "mjpeg", "synthetic"):
            require("opencv", what=f"a {spec.kind} source (--source)")
        if args.loop and spec.live:
            raise OptionError("--loop replays files and folders; live sources reconnect by themselves, drop --loop")
        stream_options = StreamOptions(fps_limit=args.fps_limit, half_life=HalfLife.parse(args.half_life),
                                       threshold=args.threshold, loop=args.loop, top_k=args.top_k)
    elif any(v for v in (args.fps, args.width, args.height, args.loop, args.fps_limit, args.threshold)):
        raise OptionError("--fps, --width, --height, --loop, --fps-limit and --threshold shape the live source: "
                          "pass --source too, or drop them")
    clf = open_classifier(args, top_k=args.top_k)
    # on loopback without a token, refuse other Host names: a web page cannot reach the service by DNS rebinding
    hosts = LOOPBACK_HOSTS if (is_loopback(args.host) and not token) else None
    app = create_app(clf, spec, stream_options=stream_options, token=token, allowed_hosts=hosts,
                     max_body_bytes=args.max_body_bytes, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                     top_k=args.top_k, preview_fps=args.preview_fps)
    seconds = app.state.service.warm_up()
    if not args.quiet:
        print(f"edgeclip serve: warmed up batch sizes 1-{args.max_batch} in {seconds:.1f} s", file=sys.stderr)
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    if warning:
        print(warning, file=sys.stderr)
    if not args.quiet:
        print(f"edgeclip serve: image encoder {clf.choice.describe()}", file=sys.stderr)
        if spec is not None:
            print(f"edgeclip serve: live source {spec.text}", file=sys.stderr)
    print(f"edgeclip serve: listening on http://{shown}:{port}/" + ("  (token required: open /?token=...)"
                                                                    if token else ""), file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning" if args.quiet or not args.verbose else "info",
                            timeout_graceful_shutdown=2, access_log=bool(args.verbose))
    server = uvicorn.Server(config)
    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the previous handler: this one makes
    # a requested stop a clean exit (status 0) instead of an interrupt
    quiet = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in quiet.items():
            signal.signal(sig, handler)
        sock.close()
    print("edgeclip serve: stopped", file=sys.stderr)
    return 0
