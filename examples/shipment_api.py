"""The shipment API that flows/shipment_status.yaml's `lookup_shipment` webhook calls: a tool server to copy.

    python examples/shipment_api.py            # serve on 127.0.0.1:8089 until Ctrl-C
    python examples/shipment_api.py --detach   # return once it listens; stop: kill $(cat shipment_api.pid)

The webhook contract (adapters/tools.py): POST with the LLM's arguments as a JSON object body (GET: as query
parameters); answer 2xx with JSON, at most 64 KiB, within the tool's timeout_ms. With SHIPMENT_API_SECRET set
(the same value as the flow's `webhook.secret`), every request must carry a valid X-Callstate-Signature.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from urllib.parse import urlsplit

from aiohttp import web

from adapters.tools import SIGNATURE_HEADER, verify_signature

SHIPMENTS = {"1Z999AA10123456784": {"status": "delayed", "eta": "Thursday by 8 pm", "last_scan": "Memphis hub"}}


def app(delay_ms: int, secret: str | None) -> web.Application:
    async def lookup(request: web.Request) -> web.Response:
        body = await request.read()
        if secret and not verify_signature(secret, request.headers.get(SIGNATURE_HEADER, ""), body, now=time.time()):
            return web.json_response({"error": "bad signature"}, status=401)
        try:
            number = str((await request.json()).get("tracking_number", "")).replace(" ", "")
        except ValueError:
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        await asyncio.sleep(delay_ms / 1000)  # slower than the flow's on_delay, so the agent says "Let me check"
        found = SHIPMENTS.get(number)
        if found is None:  # an answer the LLM can read, not an HTTP error: it can ask the caller again
            return web.json_response({"tracking_number": number, "found": False})
        return web.json_response({"tracking_number": number, "found": True, **found})

    application = web.Application()
    application.router.add_post("/shipments", lookup)
    return application


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the same variable the flow reads, so one setting moves both ends
    default_port = urlsplit(os.environ.get("SHIPMENT_API_URL", "")).port or 8089
    p.add_argument("--port", type=int, default=default_port, help="default: SHIPMENT_API_URL's port, else 8089")
    p.add_argument("--delay-ms", type=int, default=1200, help="answer this late (default 1200)")
    p.add_argument("--detach", action="store_true", help="run in the background; return once listening")
    p.add_argument("--pidfile", default="shipment_api.pid", help="with --detach: where the pid goes")
    args = p.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", args.port))
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    sock.listen(128)  # listening before we return: a client started right after us connects
    url = f"http://127.0.0.1:{args.port}/shipments"
    if args.detach and (pid := os.fork()):
        with open(args.pidfile, "w") as f:
            f.write(f"{pid}\n")
        print(f"shipment API on {url} (pid {pid}; stop it with: kill $(cat {args.pidfile}))")
        return 0
    if args.detach:  # the child: its own session, and none of the caller's pipes (a reader would wait on them)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    else:
        print(f"shipment API on {url} (Ctrl-C to stop)", flush=True)
    web.run_app(app(args.delay_ms, os.environ.get("SHIPMENT_API_SECRET")), sock=sock, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
