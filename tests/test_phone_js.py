"""The browser phone's page logic (callstate/phone/dsp.js) under node's test runner: resampler, mu-law
(byte for byte against adapters/audio.py), framing, the playback queue's marks/clear/jitter buffer, and the
live view's bookkeeping. The page itself runs in Chromium in tests/test_phone_browser.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from adapters.audio import DECODE, ulaw_encode
from callstate.phone import states_json

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")


def test_phone_dsp_under_node(tmp_path: Path) -> None:
    if NODE is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed: CI must run the page's unit tests")
        pytest.skip("node is not installed")
    samples = list(range(-32768, 32768, 7))
    ref = {"decode": list(DECODE), "samples": samples, "encode": list(ulaw_encode(samples))}
    table = tmp_path / "ulaw.json"
    table.write_text(json.dumps(ref))
    done = subprocess.run([NODE, "--test", str(HERE / "phone_dsp.test.js")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PHONE_ULAW_JSON": str(table),
                               "PHONE_STATES_JSON": states_json()}, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# pass 10" in done.stdout, done.stdout[-2000:]


def test_inlined_sources_cannot_end_their_script_tag() -> None:
    from callstate.phone import _asset, render_page

    for name in ("dsp.js", "worklet.js"):
        assert "</script" not in _asset(name).lower()
    page = render_page(token="1.2.3", flow="f<script>")
    assert page.count("<script>") == 2 and "f&lt;script&gt;" in page and "{{" not in page
