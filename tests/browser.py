"""A small Chrome DevTools Protocol client over aiohttp: headless Debian Chromium with a fake microphone.

Enough of CDP for the browser phone's tests and bench: launch, open a page, evaluate JavaScript (with a user
gesture, so audio may start), wait for a condition, take a screenshot. No browser download: it drives
/usr/bin/chromium (`.ci/run` installs Debian's package when it is missing).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = os.environ.get("CALLSTATE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1200,800"]


def available() -> bool:
    return Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None


class CdpError(RuntimeError):
    pass


class Browser:
    """One Chromium process and one page target, driven through a flattened CDP session."""

    def __init__(self, *, mic_wav: Path | None = None) -> None:
        self.mic_wav = mic_wav
        self.proc: asyncio.subprocess.Process | None = None
        self.profile = tempfile.mkdtemp(prefix="callstate-chromium-")
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session_id = ""
        self.next_id = 0
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self.reader: asyncio.Task[None] | None = None
        self.drainer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        flags = [*FLAGS, f"--user-data-dir={self.profile}"]
        if self.mic_wav is not None:
            # %noloop: the file plays once, then silence (Chromium's fake capture loops it otherwise).
            flags.append(f"--use-file-for-fake-audio-capture={self.mic_wav}%noloop")
        self.proc = await asyncio.create_subprocess_exec(CHROMIUM, *flags, "about:blank",
                                                         stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.PIPE)
        url = await asyncio.wait_for(self._devtools_url(), 30)
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(url, max_msg_size=64 * 1024 * 1024)
        self.reader = asyncio.create_task(self._read())
        target = await self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                   session=False)
        self.session_id = attached["sessionId"]
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        # CSS pixels = screenshot pixels, whatever the window decorations: boxes map straight onto the PNG.
        await self.send("Emulation.setDeviceMetricsOverride", {"width": 1200, "height": 800, "deviceScaleFactor": 1,
                                                               "mobile": False})
        return self

    async def _devtools_url(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                raise CdpError("chromium exited before it opened DevTools")
            m = re.search(rb"DevTools listening on (ws://\S+)", line)
            if m:
                # drain the rest of stderr so the pipe never fills and blocks the browser
                self.drainer = asyncio.create_task(self._drain(self.proc.stderr))
                return m.group(1).decode()

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.waiting:
                fut = self.waiting.pop(data["id"])
                if not fut.done():
                    fut.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(data["params"]["exceptionDetails"])[:500])

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True,
                   timeout: float = 30) -> dict[str, Any]:
        assert self.ws is not None
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        await self.ws.send_str(json.dumps(msg))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && !!window.phone", timeout=30)

    async def eval(self, expression: str, *, gesture: bool = False, timeout: float = 30) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True, "userGesture": gesture},
                                 timeout=timeout)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:60]}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, timeout: float = 30, every: float = 0.05) -> Any:
        """Evaluate until truthy (a condition awaited in the page, with a deadline)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"not true after {timeout} s: {expression}\nconsole: {self.console[-10:]}")
            await asyncio.sleep(every)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))

    async def __aexit__(self, *exc: object) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.profile)


# ---------------------------------------------------------------------------------------------- screenshots


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes)."""
    import struct
    import zlib

    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, b"", 0
    height = color = 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or color not in (2, 6) or interlace:
                raise ValueError(f"unsupported PNG: depth {depth}, color type {color}, interlace {interlace}")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + size
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):  # the five PNG filters (RFC 2083 section 6)
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
        rows.append(bytes(v for i, v in enumerate(line) if bpp == 3 or i % 4 != 3))
    return width, height, rows


def colors_in(rows: list[bytes], box: dict[str, float]) -> set[tuple[int, int, int]]:
    """Every RGB color inside a CSS-pixel box (device scale 1) of a screenshot."""
    out = set()
    for y in range(int(box["top"]), min(len(rows), int(box["bottom"]))):
        row = rows[y]
        for x in range(int(box["left"]), min(len(row) // 3, int(box["right"]))):
            out.add((row[3 * x], row[3 * x + 1], row[3 * x + 2]))
    return out


# ---------------------------------------------------------------------------------------------- one call


MIC_WAV = Path(__file__).resolve().parent / "data" / "phone_caller.wav"
PHONE_FLOW = Path(__file__).resolve().parent / "data" / "phone_flow.yaml"


async def browser_call(db: Path, shot: Path, *, mic_wav: Path = MIC_WAV) -> dict[str, Any]:
    """A whole call through /phone: Chromium's fake microphone plays `mic_wav`; the call ends after the
    agent's second answer (a DTMF key is pressed first). Returns what the tests and the bench read."""
    from callstate.flows import resolve_flow
    from callstate.providers import build_providers
    from callstate.server import Server, start
    from logstore.sqlite import SqliteStore

    flow = resolve_flow(str(PHONE_FLOW))
    store = SqliteStore(db)
    server = Server(flow, build_providers(flow, {}), store, phone=True)
    runner, port = await start(server)
    try:
        async with Browser(mic_wav=mic_wav) as b:
            await b.goto(f"http://127.0.0.1:{port}/phone")
            await b.eval("phone.start()", gesture=True)
            # The agent's second answer: after the caller cut in over the first (the WAV's timing).
            await b.wait_for("phone.view.bargeIns > 0 && phone.view.items.filter(i => i.kind === 'agent')"
                             ".some(i => i.text.startsWith('Understood') && i.playedMs > 0)", timeout=60)
            await b.eval("document.querySelector('#keypad button:nth-child(5)').click()", gesture=True)
            await b.wait_for("phone.view.items.length && phone.view.lastSeq > 0 && "
                             "phone.view.items.some(i => i.kind === 'caller')")
            dom = await b.eval("""(() => {
                const box = (el) => { const r = el.getBoundingClientRect();
                  return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
                const all = (sel) => [...document.querySelectorAll(sel)];
                return {
                  rows: all('#log .row').map(r => [r.className.replace('row ', ''), r.textContent]),
                  cut: all('#log .cut').map(box), bargeIn: all('#log .row.barge-in .txt').map(box),
                  caller: all('#log .row.caller .txt').map(box), state: document.querySelector('#state').textContent,
                  stateBox: box(document.querySelector('#state')),
                  turns: all('#turns .turn').map(t => t.textContent),
                };
              })()""")
            await b.screenshot(shot)
            stats = await b.eval("JSON.parse(JSON.stringify(phone.stats))")
            view_turns = await b.eval("phone.view.turns")
            await b.eval("phone.hangup()")
            await b.wait_for("phone.over && !$('end').hidden", timeout=20)
            timeline = await b.eval("$('timeline').href")
            console = list(b.console)
        while server.calls:  # the call's task flushes and closes its log
            await asyncio.sleep(0.05)
        call_id = next(r.call_id for r in store.list_calls())
        async with aiohttp.ClientSession() as http, http.get(timeline) as resp:  # the page's link, as clicked
            timeline_page = (resp.status, await resp.text())
        return {"timeline_page": timeline_page,
                "dom": dom, "stats": stats, "view_turns": view_turns, "timeline": timeline, "console": console,
                "call_id": call_id, "records": store.load_records(call_id), "flow": flow,
                "row": next(r for r in store.list_calls() if r.call_id == call_id), "port": port}
    finally:
        await server.shutdown()
        await runner.cleanup()
        store.close()
