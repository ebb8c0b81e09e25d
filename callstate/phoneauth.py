"""Who may open /media and the event streams besides Twilio: the /phone page's tokens and a bearer key.

Rules:
- A phone token is ``<expiry unix s>.<nonce>.<HMAC-SHA256 of both>`` under a secret drawn at server start
  (``secrets``), so tokens die with the process and cannot be forged or extended by a client. Minted by
  GET /phone, good for ``ttl_s`` (default 10 minutes) to open a call or a stream; a stream or call already
  open goes on past the expiry.
- The bearer key (``CALLSTATE_API_KEY``) is for programs watching calls from outside
  (``Authorization: Bearer KEY``). Both compare in constant time; neither value is ever logged.
- Time comes from a clock function (tests pass their own); nothing here is part of the sans-IO core.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable

from aiohttp import web

API_KEY_ENV = "CALLSTATE_API_KEY"
#: Set by `engine serve --workers N --phone` for its workers (hex), so a token one worker minted opens /media
#: on another; unset, each process draws its own.
SECRET_ENV = "CALLSTATE_PHONE_SECRET"


class PhoneTokens:
    def __init__(self, *, ttl_s: int = 600, clock: Callable[[], float] = time.time,
                 secret: bytes | None = None) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        shared = os.environ.get(SECRET_ENV)
        self._secret = secret or (bytes.fromhex(shared) if shared else secrets.token_bytes(32))

    def __repr__(self) -> str:  # never the secret
        return f"PhoneTokens(ttl_s={self.ttl_s})"

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()

    def mint(self) -> str:
        body = f"{int(self.clock()) + self.ttl_s}.{secrets.token_hex(8)}"
        return f"{body}.{self._sign(body)}"

    def valid(self, token: str | None) -> bool:
        if not token or len(token) > 200:
            return False
        body, _, sig = token.rpartition(".")
        expiry = body.partition(".")[0]
        if not expiry.isdigit() or not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            return False
        return int(expiry) >= self.clock()


class Access:
    """The checks of /media (besides Twilio's signature) and of /calls/{id}/events and /timeline."""

    def __init__(self, tokens: PhoneTokens | None, api_key: str | None) -> None:
        self.tokens, self._api_key = tokens, api_key or None

    def token_ok(self, request: web.Request) -> bool:
        return self.tokens is not None and self.tokens.valid(request.query.get("token"))

    def key_ok(self, request: web.Request) -> bool:
        if self._api_key is None:
            return False
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._api_key.encode())

    def check_reader(self, request: web.Request) -> None:
        """Raise 401 unless the request carries a valid phone token or the bearer key."""
        if not (self.token_ok(request) or self.key_ok(request)):
            raise web.HTTPUnauthorized(text="a phone token (?token=) or the API key (Authorization: Bearer) "
                                            "is required\n", headers={"WWW-Authenticate": "Bearer"})
