"""`engine demo`: a whole shipment-status phone call over loopback, with the offline providers.

A simulated caller speaks real recorded speech (espeak-ng, committed as mu-law fixtures) over the real
Media Streams protocol to `engine serve`'s application; the agent looks the parcel up through a real
HTTP webhook that is slower than the flow's delay message; the caller barges in on the long answer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from aiohttp import web

from engine.flow import Flow

LINES = [
    ("shipment_1", "Hi, is my shipment delayed?"),
    ("shipment_2", "The tracking number is 4 5 1 9 9 2."),
    ("shipment_3", "Wait, actually, can you text me instead?"),
    ("shipment_4", "No, that's all. Thanks, bye."),
]
#: The webhook answers after this long: slower than the flow's on_delay (800 ms), so the agent says
#: "Let me check that." while it waits.
LOOKUP_DELAY_MS = 1300


def demo_flow(webhook_url: str) -> Flow:
    return Flow.model_validate({
        "name": "shipment_status_demo",
        "greeting": "Acme shipping, how can I help?",
        "system": "You are Acme's shipping assistant on the phone. Be brief.",
        "llm": {"provider": "local"}, "stt": {"provider": "local"}, "tts": {"provider": "local"},
        "tools": {"lookup_shipment": {
            "description": "Look a shipment up by its tracking number.",
            "parameters": {"type": "object", "required": ["tracking_number"],
                           "properties": {"tracking_number": {"type": "string"}}},
            "webhook": {"url": webhook_url, "timeout_ms": 3000},
            "messages": {"on_delay": [{"after_ms": 800, "text": "Let me check that."}],
                         "on_error": "Sorry, I can't reach the tracking system right now."}}},
        "local": {
            "caller": [text for _, text in LINES],
            "replies": [
                {"text": "Sure. What's the tracking number?"},
                {"tool": "lookup_shipment", "arguments": {"tracking_number": "451992"}},
                {"text": "It's running a day late. It left our Memphis hub this morning, and the new "
                         "delivery estimate is Thursday before noon. I'm sorry about the delay."},
                {"text": "Of course, I'll text you. Anything else?"},
                {"text": "Thanks for calling. Bye!"},
            ],
        },
    })


@dataclass
class Webhook:
    runner: web.AppRunner
    url: str
    requests: int = 0


async def start_webhook(delay_ms: int = LOOKUP_DELAY_MS) -> Webhook:
    """A loopback shipment API: POST {tracking_number} -> its status, after delay_ms."""
    hook: Webhook

    async def lookup(request: web.Request) -> web.Response:
        hook.requests += 1
        body = await request.json()
        await asyncio.sleep(delay_ms / 1000)
        return web.json_response({"tracking_number": body.get("tracking_number"), "status": "delayed",
                                  "eta": "Thursday before noon", "last_scan": "Memphis hub"})

    app = web.Application()
    app.router.add_post("/shipments", lookup)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook = Webhook(runner=runner, url=f"http://127.0.0.1:{port}/shipments")
    return hook


def caller_params() -> dict[str, str]:
    return {"script": json.dumps([text for _, text in LINES])}
