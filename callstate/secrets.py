"""Which values are secrets for `engine serve`, and the flow as the log may keep it.

Secrets: every value a flow took from the environment (webhook headers, HMAC secrets, keys in URLs), and
every environment variable whose name says it holds a credential (provider keys, TWILIO_AUTH_TOKEN). They are
masked in the log's rows and meta (engine/redact.py) and in the server's console output (callstate/logsetup.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from engine.flow import Flow

_CREDENTIAL = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|AUTH|CREDENTIAL)", re.I)


def secret_values(environ: Mapping[str, str], flow_env_values: Iterable[str] = ()) -> list[str]:
    named = [v for k, v in environ.items() if _CREDENTIAL.search(k) and v]
    return sorted({*named, *flow_env_values})


def replay_risks(flow: Flow) -> list[str]:
    """Masked values the call machine itself reads (anything but a tool's webhook and the providers'
    settings): a replay runs with the mask, so what such a value made the agent say will differ."""
    return [p for p in flow.env_paths()
            if not re.match(r"(tools\.[^.]+\.webhook\.|(stt|llm|tts)\.)", p)]
