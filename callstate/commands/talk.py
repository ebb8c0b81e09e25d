"""`engine talk FLOW`: talk to a flow with your own voice in the browser; no phone number, no account, no key.

It is `engine serve --phone` on 127.0.0.1 with keyless stand-ins: each provider whose key is not set runs
on the offline stack (local-asr, the flow's scripted replies, local-tts), printed at start; --stt/--llm/--tts
choose otherwise. Every call is logged like any other (`engine calls`, `engine replay`).
"""

from __future__ import annotations

import argparse

from callstate.commands import serve
from callstate.logs import DB_HELP, DEFAULT_DB
from engine.store import DEFAULT_LEASE_S

LOG_LEVEL = "info"  # like serve: one line per call started and ended
HELP = "talk to a flow from the browser (http://127.0.0.1:PORT/phone); offline unless keys are set"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("flow", nargs="?", help="the agent's flow (YAML); default: the built-in flow")
    p.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    serve.add_provider_options(p)


def run(args: argparse.Namespace) -> int:
    args.host, args.phone, args.keyless = "127.0.0.1", True, True
    args.public_url, args.insecure_skip_signature, args.grace_s = None, False, 5.0
    args.workers, args.lease_s, args.worker_dir, args.worker_index = "1", DEFAULT_LEASE_S, None, 0
    args.trusted_proxy, args.max_connections = [], serve.Limits.max_connections
    args.stream_start_timeout_s = serve.StreamLimits.start_s
    return serve.run(args)
