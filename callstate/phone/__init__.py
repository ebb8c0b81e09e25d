"""The browser phone: GET /phone, one self-contained page (no build step, no CDN, works offline).

page.html is a template; dsp.js (the logic node tests too) and worklet.js (the AudioWorklet processors)
are inlined into it when served, with a freshly minted phone token (callstate/phoneauth.py).
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources

from engine.states import CallState


@cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def states_json() -> str:
    """The machine's state names by member, so the page's live view names states as the engine does."""
    return json.dumps({s.name: s.value for s in CallState})


def render_page(*, token: str, flow: str) -> str:
    # </script> inside an inlined script would end it early: the sources never contain it (tested).
    return (_asset("page.html")
            .replace("{{TOKEN}}", html.escape(token, quote=True))
            .replace("{{FLOW}}", html.escape(flow))
            .replace("{{STATES}}", states_json())
            .replace("{{DSP}}", _asset("dsp.js"))
            .replace("{{WORKLET_JSON}}", json.dumps(_asset("worklet.js")).replace("</", "<\\/")))
