"""`engine talk FLOW`: talk to a flow with your own voice in the browser; no phone number, no account, no key.

It is `engine serve --phone` on 127.0.0.1 with keyless stand-ins: each provider whose key is not set runs
on the offline stack (local-asr, the flow's scripted replies, local-tts), printed at start; --stt/--llm/--tts
choose otherwise. Every call is logged like any other (`engine calls`, `engine replay`).
"""

from __future__ import annotations

import argparse

from callstate.commands import serve
from callstate.logs import add_db

LOG_LEVEL = "info"  # like serve: one line per call started and ended
HELP = "talk to a flow from the browser (http://127.0.0.1:PORT/phone); offline unless keys are set"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("flow", nargs="?", help="the agent's flow (YAML); default: the built-in flow")
    p.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (0: any free port)")
    add_db(p)
    serve.add_provider_options(p)


def run(args: argparse.Namespace) -> int:
    # Every serve option talk does not take keeps serve's own default (so serve can grow options freely).
    defaults = argparse.ArgumentParser(add_help=False)
    serve.configure(defaults)
    for name, value in vars(defaults.parse_args([])).items():
        if not hasattr(args, name):
            setattr(args, name, value)
    args.host, args.phone, args.keyless, args.grace_s = "127.0.0.1", True, True, 5.0
    return serve.run(args)
