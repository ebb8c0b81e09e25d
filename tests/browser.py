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
