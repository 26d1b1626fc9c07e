"""``agentspark serve``: an OpenAI-compatible HTTP server (``/v1/chat/completions``, ``/v1/models``)
over the engine, speculative by default. Binds 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from ..errors import AgentSparkError
from .common import add_drafter_args, add_model_args

API_KEY_ENV = "AGENTSPARK_API_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    add_model_args(p)
    add_drafter_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)")
    p.add_argument("--model-name", default=None,
                   help="the model id clients name (default: agentspark-default, or derived from --model)")
    p.add_argument("--plain", action="store_true", help="serve plain target decoding instead of speculative")
    p.add_argument("--default-max-tokens", type=int, default=256,
                   help="max_tokens of requests that set none (default: 256)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
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


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..backends.local import LocalBackend
    from ..drafters.factory import build_drafter
    from ..engine import Engine
    from ..model.loading import load_model
    from ..server import create_app

    if not 0 <= args.port <= 65535:
        raise AgentSparkError(f"--port must be in 0..65535, got {args.port}")
    if args.default_max_tokens < 1:
        raise AgentSparkError(f"--default-max-tokens must be >= 1, got {args.default_max_tokens}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    model_name = args.model_name or model_name_for(args.model)
    if not is_loopback(args.host) and not api_key:
        print(
            f"agentspark: WARNING: binding {args.host} without an API key: anyone who can reach this "
            f"port can run the model. Set --api-key or ${API_KEY_ENV}.",
            file=sys.stderr,
        )

    target = load_model(args.model, dtype=args.dtype, device=args.device)
    drafter = None if args.plain else build_drafter(args.drafter, target)
    engine = Engine(target, drafter, max_draft=args.max_draft, schedule=args.schedule,
                    confidence_threshold=args.confidence_threshold)
    backend = LocalBackend(engine, speculative=not args.plain)
    app = create_app(backend, model_name=model_name, api_key=api_key, default_max_tokens=args.default_max_tokens)

    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"agentspark: serving {model_name!r} ({backend.name}) at http://{host}:{args.port}/v1"
          f"{' (API key required)' if api_key else ''}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
