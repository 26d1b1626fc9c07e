"""``agentspark serve``: an OpenAI-compatible HTTP server (``/v1/chat/completions``, ``/v1/models``)
over the engine, speculative by default. Binds 127.0.0.1 unless told otherwise.

Everything that can be checked without the model is checked before it loads (minutes for a big
one): the options, the API key, and that the address can be bound."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ..errors import AgentSparkError
from .common import add_drafter_args, add_model_args, exact_of

API_KEY_ENV = "AGENTSPARK_API_KEY"
# server.guard.DEFAULT_MAX_BODY_BYTES (a test keeps them equal): importing the server here would
# load FastAPI for every command of the CLI.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_QUEUED = 64  # server.app.DEFAULT_MAX_QUEUED (the same test keeps them equal)
DEFAULT_SLOTS = 4


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    add_model_args(p)
    add_drafter_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)")
    p.add_argument("--served-model-name", action="append", default=[], metavar="NAME",
                   help="another name clients may use for the model (repeatable; /v1/models lists them all)")
    p.add_argument("--model-name", default=None,
                   help="the model id clients name (default: agentspark-default, or derived from --model)")
    p.add_argument("--plain", action="store_true", help="serve plain target decoding instead of speculative")
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS,
                   help=f"requests generated at once, batched in every forward (default: {DEFAULT_SLOTS}); "
                        "1 serves one at a time on the single-request engine")
    p.add_argument("--max-queued", type=int, default=DEFAULT_MAX_QUEUED,
                   help=f"requests that may wait for a slot; past that 429 with Retry-After (default: {DEFAULT_MAX_QUEUED})")
    p.add_argument("--tool-calls", default="constrained", choices=["constrained", "forced"],
                   help="tool_choice required or a tool's name: constrained (the default: a grammar of the offered "
                        "tools' names and argument schemas; the model writes the whole call and the grammar ends it) "
                        "or forced (the call's opening is put in the model's mouth as text)")
    p.add_argument("--close-forced-calls", action="store_true",
                   help="with --tool-calls forced and tool_choice naming a tool, the model writes only its first "
                        "argument's value and the server closes the call (small models)")
    p.add_argument("--default-max-tokens", type=int, default=256,
                   help="max_tokens of requests that set none (default: 256)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"largest request body accepted; bigger ones get 413 unread "
                        f"(default: {DEFAULT_MAX_BODY_BYTES} = {DEFAULT_MAX_BODY_BYTES // 2**20} MiB)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="the server's log level (default: info)")
    p.set_defaults(run=run_serve)


def model_name_for(model: str) -> str:
    if model == "default":
        return "agentspark-default"
    name = Path(model.rstrip("/\\")).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name or "agentspark-model"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key_from(args: argparse.Namespace) -> str | None:
    """--api-key, else $AGENTSPARK_API_KEY, else None. An empty or blank key is refused rather
    than read as 'no key': a key that failed to expand in a script must not open the server."""
    from ..server.guard import check_api_key

    for key, source in ((args.api_key, "--api-key"), (os.environ.get(API_KEY_ENV), f"${API_KEY_ENV}")):
        if key is None:
            continue
        try:
            check_api_key(key)
        except ValueError as exc:
            raise AgentSparkError(f"{source}: {exc}; leave it unset to serve without a key") from None
        return key
    return None


def reserve_port(host: str, port: int) -> socket.socket | None:
    """Bind host:port as uvicorn will, before the model loads, so a busy port fails in a second
    rather than after the load. The socket holds the port until uvicorn takes over (None for
    port 0: any free port will do)."""
    if port == 0:
        return None
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)  # uvicorn's choice of family
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does (TIME_WAIT is no conflict)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "stop what uses it or pick another --port" if exc.errno == errno.EADDRINUSE else "check --host and --port"
        raise AgentSparkError(f"cannot bind {host}:{port}: {exc.strerror or exc}; {hint}") from None
    except (TypeError, UnicodeError, ValueError):  # a host name that is no host name at all ('\x80')
        sock.close()
        raise AgentSparkError(f"--host {host!r} is not a host name or address; use e.g. 127.0.0.1") from None
    return sock


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..backends.batched import BatchBackend
    from ..backends.local import LocalBackend
    from ..batch import BatchEngine
    from ..drafters.factory import build_drafter
    from ..engine import Engine
    from ..model.loading import load_model
    from ..server import create_app

    if not 0 <= args.port <= 65535:
        raise AgentSparkError(f"--port must be in 0..65535, got {args.port}")
    if args.default_max_tokens < 1:
        raise AgentSparkError(f"--default-max-tokens must be >= 1, got {args.default_max_tokens}")
    if args.max_body_bytes < 1:
        raise AgentSparkError(f"--max-body-bytes must be >= 1, got {args.max_body_bytes}")
    if not 1 <= args.slots <= 64:
        raise AgentSparkError(f"--slots must be in 1..64, got {args.slots}")
    if args.max_queued < 0:
        raise AgentSparkError(f"--max-queued must be >= 0, got {args.max_queued}")
    api_key = api_key_from(args)
    model_name = args.model_name or model_name_for(args.model)
    if not is_loopback(args.host) and not api_key:
        print(
            f"agentspark: WARNING: binding {args.host} without an API key: anyone who can reach this "
            f"port can run the model. Set --api-key or ${API_KEY_ENV}.",
            file=sys.stderr,
        )

    reserved = reserve_port(args.host, args.port)
    try:
        target = load_model(args.model, dtype=args.dtype, device=args.device)
        drafter = None if args.plain else build_drafter(args.drafter, target)
        if args.slots > 1:  # the SPS(B) table of an adaptive batch is measured (or read) right here
            engine = BatchEngine(target, drafter, slots=args.slots, max_draft=args.max_draft, exact=exact_of(args),
                                 schedule=args.schedule, confidence_threshold=args.confidence_threshold)
            backend = BatchBackend(engine, speculative=not args.plain, close_forced_calls=args.close_forced_calls,
                                   constrain_tool_calls=args.tool_calls == "constrained")
        else:
            engine = Engine(target, drafter, max_draft=args.max_draft, exact=exact_of(args), schedule=args.schedule,
                            confidence_threshold=args.confidence_threshold)
            if drafter is not None and engine.schedule in ("adaptive",):
                engine.steps_per_second()  # at start-up (or from the cache): never inside a request
            backend = LocalBackend(engine, speculative=not args.plain, close_forced_calls=args.close_forced_calls,
                                   constrain_tool_calls=args.tool_calls == "constrained")
        app = create_app(backend, model_name=model_name, api_key=api_key, default_max_tokens=args.default_max_tokens,
                         max_body_bytes=args.max_body_bytes, max_queued=args.max_queued,
                         aliases=args.served_model_name)
    finally:
        if reserved is not None:
            reserved.close()  # handed over: uvicorn binds the same address right below

    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"agentspark: serving {model_name!r} ({backend.name}, {args.slots} at once) at http://{host}:{args.port}/v1"
          f"{' (API key required)' if api_key else ''}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
