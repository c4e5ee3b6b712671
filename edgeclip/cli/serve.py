"""``edgeclip serve``: the HTTP service (REST API, live preview, label editing page) over a bundle."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from .options import add_load_options, add_options, load_options, options_from_args

EPILOG = """\
endpoints (JSON; see docs/serve.md):
  GET  /                   the page: live preview, current label, labels editor, photo drop zone
  POST /v1/classify        image body (JPEG/PNG/WebP) or multipart field 'file'; ?top_k=N
  GET  /v1/labels          the labels in use;  PUT /v1/labels {"labels": [...]} (?persist=1: into the bundle)
  GET  /v1/status          model, batching, labels, live source
  GET  /v1/stream          server-sent events of the source's decisions     (with --source)
  GET  /v1/preview.mjpg    annotated frames (MJPEG), newest only             (with --source)
  GET  /healthz            liveness (no token);  GET /metrics  Prometheus text
  GET  /v1/watch           cameras, regions and their states                (with --watch)

token: clients send 'Authorization: Bearer TOKEN'; a browser opens http://HOST:PORT/?token=TOKEN once (a
cookie then carries it). Pass it with --token, --token-file or the EDGECLIP_TOKEN environment variable
(the last two keep it out of the process list).

examples:
  edgeclip serve bundle                                   # http://127.0.0.1:8080/, photos only
  edgeclip serve bundle --source 0                        # + a camera's live preview and events
  EDGECLIP_TOKEN=s3cret edgeclip serve bundle --source csi://0 --host 0.0.0.0
  curl --data-binary @photo.jpg 'http://127.0.0.1:8080/v1/classify?top_k=3'
"""


#: the stream options that shape the service's live source
LIVE_STREAM_OPTIONS = ("fps_limit", "roi", "half_life", "threshold", "hysteresis", "min_frames")


def register(sub: argparse._SubParsersAction) -> None:
    from .. import SourceOptions, StreamOptions
    from ..serve import ServeOptions

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

    add_options(p, ServeOptions)
    live = "live source (with --source)"
    add_options(p, SourceOptions, groups={None: live})
    add_options(p, StreamOptions, LIVE_STREAM_OPTIONS, groups={"processing": live, "decisions": live})
    add_load_options(p)
    p.set_defaults(handler=run_serve)


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
    from ..serve import is_loopback

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
    sock.listen(1024)  # a burst of connections waits in the kernel, not refused
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

    from .. import SourceOptions, StreamOptions, load
    from ..serve import LOOPBACK_HOSTS, ServeOptions, create_app, is_loopback, prepare_source
    from ..serve.server import build_server

    source_options = options_from_args(SourceOptions, args)
    stream_options = options_from_args(StreamOptions, args, LIVE_STREAM_OPTIONS)
    if args.source is None and (source_options.given() or stream_options.given()):
        shaping = sorted(source_options.given() | stream_options.given())
        raise OptionError(f"{', '.join('--' + n.replace('_', '-') for n in shaping)} shape the live source: pass "
                          f"--source too, or drop them")
    spec = prepare_source(args.source, source_options) if args.source is not None else None
    # on loopback without a token, refuse other Host names: a web page cannot reach the service by DNS rebinding
    hosts = LOOPBACK_HOSTS if (is_loopback(args.host) and not token) else None
    options = options_from_args(ServeOptions, args, token=token, allowed_hosts=hosts)
    clf = load(args.bundle, load_options(args), top_k=args.top_k)
    app = create_app(clf, spec, options=options, stream_options=stream_options)
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
    server = build_server(app, log_level="warning" if args.quiet or not args.verbose else "info",
                          timeout_graceful_shutdown=2, access_log=bool(args.verbose))
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
