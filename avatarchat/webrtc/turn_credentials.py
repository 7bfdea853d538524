"""Time-limited TURN credentials: the TURN REST scheme that coturn implements (``use-auth-secret``).

The service and the TURN server share a secret. Each page that asks gets its own user name,
``<expiry unix time>:<random tag>``, and password, ``base64(HMAC-SHA1(secret, user name))``; the
TURN server recomputes the password and refuses a user name whose time has passed. A password that
leaks therefore expires, and the secret itself never leaves the server side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TurnCredential:
    username: str
    password: str
    expires_at: int  # unix time


def time_limited_credential(secret: str, ttl_s: int, now: float | None = None,
                            tag: str | None = None) -> TurnCredential:
    """A user name valid for ``ttl_s`` seconds from ``now`` and its password under ``secret``."""
    expires_at = int(time.time() if now is None else now) + int(ttl_s)
    username = f"{expires_at}:{tag or secrets.token_hex(6)}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredential(username, base64.b64encode(digest).decode(), expires_at)
