"""Who is calling, and how often: API keys (stored hashed) and per-caller rate limits.

Keys: the `api_keys` setting (env `ADAUDIT_API_KEYS`, from a Kubernetes Secret in production)
lists `name:sha256hex` entries, the SHA-256 hex digest of each key next to the caller's name;
the keys themselves are never stored, logged or shown. A caller sends its key as
`Authorization: Bearer KEY` or `X-API-Key: KEY`; the gateway hashes it and looks the digest up.
A name may have several keys (rotation: add the new key, move callers, drop the old one). With
no keys configured the gateway is open and the caller is anonymous. The caller's name goes into
every decision-log row (`decisions.caller`).

    python -m adaudit.service.security NAME    # a new random key and its `name:sha256hex` entry

Rate limits: one token bucket per caller (`rate_limit_per_s` tokens a second, at most
`rate_limit_burst` saved up; anonymous callers share one bucket). An empty bucket is a 429
`rate_limited` with `Retry-After` (whole seconds until the next token). Both checks run as a
FastAPI dependency on every `/v1` route, so the OpenAPI document names the two schemes.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import sys
import threading
import time

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import ApiError

ANONYMOUS = "anonymous"
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_api_keys(entries: list[str]) -> dict[str, str]:
    """{sha256 hex digest: caller name}; a malformed entry is named by position, never echoed."""
    keys: dict[str, str] = {}
    for position, entry in enumerate(entries):
        name, _, hexdigest = entry.rpartition(":")
        hexdigest = hexdigest.strip().lower()
        if not NAME.match(name.strip()) or not DIGEST.match(hexdigest):
            raise ValueError(f"api_keys entry {position} is not name:sha256hex (a name of letters, digits, "
                             "_.@- and the 64-character SHA-256 hex digest of the key, not the key itself)")
        if keys.get(hexdigest, name.strip()) != name.strip():
            raise ValueError(f"api_keys entry {position} repeats another caller's key digest")
        keys[hexdigest] = name.strip()
    return keys


class TokenBuckets:
    """One token bucket per caller: `take(caller)` -> 0 if allowed, else seconds until a token is due."""

    def __init__(self, rate_per_s: float, burst: int):
        self.rate, self.burst = rate_per_s, max(burst or math.ceil(rate_per_s), 1)
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, when = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - when) * self.rate)
            if tokens >= 1:
                self._buckets[caller] = (tokens - 1, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1 - tokens) / self.rate


class Guard:
    """The keys and buckets of one app (built from its settings)."""

    def __init__(self, settings):
        self.keys = parse_api_keys(settings.api_keys)
        self.buckets = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)

    def caller(self, key: str | None) -> str:
        if not self.keys:
            return ANONYMOUS
        if not key:
            raise unauthorized("an API key is required: send Authorization: Bearer KEY or X-API-Key: KEY")
        name = self.keys.get(digest(key))
        if name is None:
            raise unauthorized("the API key is not valid")
        return name

    def admit(self, caller: str) -> None:
        wait = self.buckets.take(caller)
        if wait > 0:
            raise ApiError(429, "rate_limited", f"caller {caller} is over its rate limit of "
                           f"{self.buckets.rate:g} requests a second; retry after {wait:.2f} s",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY (when api_keys are configured)")
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY (the same keys)")


async def authenticate(request: Request, bearer: HTTPAuthorizationCredentials | None = Security(BEARER),
                       header_key: str | None = Security(KEY_HEADER)) -> str:
    """The caller's name (ANONYMOUS when no keys are configured); 401 or 429 as a JSON error."""
    guard: Guard = request.app.state.guard
    caller = guard.caller(bearer.credentials if bearer is not None else header_key)
    request.state.caller = caller
    guard.admit(caller)
    return caller


def main(argv: list[str]) -> None:
    if len(argv) != 1 or not NAME.match(argv[0]):
        sys.exit("usage: python -m adaudit.service.security NAME   (letters, digits, _.@-)")
    key = secrets.token_urlsafe(32)
    print(f"key (give it to {argv[0]}, store it nowhere else): {key}")
    print(f"api_keys entry (ADAUDIT_API_KEYS, comma-separated): {argv[0]}:{digest(key)}")


if __name__ == "__main__":
    main(sys.argv[1:])
