"""PlayHT streaming TTS through the pyht SDK -> mu-law 8 kHz audio for Twilio.

PlayHT shut its public API down on 2025-12-31 (reference 4.1: Meta bought PlayAI in July 2025; Pipecat
removed its PlayHT services): the default endpoints no longer answer. This adapter serves
PlayHT-compatible or self-hosted endpoints given as ``base_url`` (and the loopback fake). Deleting this
file removes PlayHT; nothing else imports it but the composition root.

Rules:
- Imports engine.events, pyht and aiohttp (which pyht itself uses) only.
- pyht's HTTP path (reference 4.3): fetch inference coordinates from ``{base_url}/api/v4/sdk-auth``
  (``x-user-id`` + ``authorization: Bearer <key>``), then POST the text to the coordinates'
  ``http_streaming_url`` and read raw mu-law as it arrives. We yield it in 160-byte (20 ms) multiples.
- Closing the generator (aclose or task cancel) closes pyht's HTTP response at once.
- No key in any exception text: pyht's exceptions are replaced by our own short messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pyht import AsyncClient, Format, TTSOptions
from pyht.inference_coordinates import InferenceCoordinatesOptions

from adapters.audio import FrameCutter
from adapters.env import need as _need
from engine.events import BYTES_PER_MS, Speak

REQUIRED_ENV = ("PLAYHT_API_KEY", "PLAYHT_USER_ID")
AUTH_TIMEOUT_S = 5.0


class PlayHtError(Exception):
    """A PlayHT failure. The message is short and never holds the key."""


class PlayHtTts:
    """``engine.ports.Tts`` over pyht's AsyncClient (HTTP streaming)."""

    REQUIRED_ENV = REQUIRED_ENV

    def __init__(self, api_key: str, user_id: str, *, voice: str, voice_engine: str = "Play3.0-mini",
                 base_url: str | None = None, speed: float = 1.0) -> None:
        self.voice, self.voice_engine, self.speed = voice, voice_engine, speed
        self.base_url = base_url.rstrip("/") if base_url else None
        self._key, self._user_id = api_key, user_id
        self._client: AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], **settings: Any) -> PlayHtTts:
        return cls(_need(env, "PLAYHT_API_KEY"), _need(env, "PLAYHT_USER_ID"),
                   base_url=env.get("PLAYHT_BASE_URL") or None, **settings)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _pyht(self) -> AsyncClient:
        # Built lazily inside the running loop (pyht makes futures in __init__), once per loop: it caches
        # the inference coordinates, so later Speaks skip the sdk-auth round trip.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            coords = InferenceCoordinatesOptions()
            if self.base_url:
                coords.coordinates_generator_function_async = self._coordinates
            advanced = AsyncClient.AdvancedOptions(
                # auto_refresh_lease=False: otherwise pyht starts a gRPC lease loop against api.play.ht
                # even with auto_connect=False; the HTTP path needs no lease.
                auto_refresh_lease=False, inference_coordinates_options=coords)
            self._client = AsyncClient(self._user_id, self._key, auto_connect=False, advanced=advanced)
            self._loop = loop
        return self._client

    async def _coordinates(self, user_id: str, api_key: str,
                           options: InferenceCoordinatesOptions) -> dict[str, Any]:
        """pyht's sdk-auth call, against base_url, with a timeout and a safe error."""
        timeout = aiohttp.ClientTimeout(total=AUTH_TIMEOUT_S)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                    f"{self.base_url}/api/v4/sdk-auth",
                    headers={"x-user-id": user_id, "authorization": f"Bearer {api_key}"}) as resp:
                if resp.status != 200:
                    raise PlayHtError(f"playht: sdk-auth HTTP {resp.status}")
                coords: dict[str, Any] = await resp.json()
            expires = datetime.strptime(coords["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        except PlayHtError:
            raise
        except Exception as e:
            raise PlayHtError(f"playht: sdk-auth failed: {type(e).__name__}") from None
        # pyht skips its own post-processing when given an async generator, and then reads
        # refresh_at_ms on the next call: do what its get_coordinates_async does.
        coords["refresh_at_ms"] = min(
            expires.timestamp() * 1000 - options.coordinates_expiration_advance_refresh_ms,
            time.time() * 1000 + options.coordinates_expiration_minimal_frequency_ms)
        for value in coords.values():
            if isinstance(value, dict) and "http_streaming_url" in value:
                value["http_nonstreaming_url"] = value["http_streaming_url"].replace("stream", "")
        return coords

    async def synthesize(self, effect: Speak) -> AsyncIterator[bytes]:
        options = TTSOptions(voice=self.voice, format=Format.FORMAT_MULAW, sample_rate=8000, speed=self.speed)
        frames = FrameCutter()
        try:
            stream = self._pyht().tts(effect.text, options, voice_engine=self.voice_engine, protocol="http")
        except Exception as e:
            raise PlayHtError(f"playht: {_describe(e)}") from None
        try:
            try:
                async for chunk in stream:
                    out = frames.cut(chunk)
                    if out:
                        yield out
            except PlayHtError:
                raise
            except Exception as e:
                after = f" after {frames.sent // BYTES_PER_MS} ms" if frames.sent else ""
                raise PlayHtError(f"playht: {_describe(e)}{after}") from None
            if tail := frames.tail():
                yield tail
        finally:
            await stream.aclose()  # closes pyht's aiohttp response if it is still open


def _describe(e: BaseException) -> str:
    """A safe word for what went wrong: pyht raises Exception("HTTP <code>: <body>", <code>) for a status,
    and hides a broken stream behind an IndexError (it reads ``e.args[1]`` of any exception)."""
    if len(e.args) == 2 and isinstance(e.args[1], int):
        return f"HTTP {e.args[1]}"
    root = e.__context__ if isinstance(e, IndexError) and e.__context__ is not None else e
    if isinstance(root, aiohttp.ClientPayloadError):
        return "stream broken"
    if isinstance(root, aiohttp.ClientConnectionError | OSError):
        return "connection failed"
    return f"failed ({type(root).__name__})"



def from_env(env: Mapping[str, str], **settings: Any) -> PlayHtTts:
    """A PlayHtTts from PLAYHT_API_KEY, PLAYHT_USER_ID (and PLAYHT_BASE_URL); settings as the constructor."""
    return PlayHtTts.from_env(env, **settings)
