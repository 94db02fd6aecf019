"""API-key authentication for the inference routes.

Rules:
- Keys live in the Store (hashed; verified in constant time there). The plaintext is never logged.
- `Authorization: Bearer <key>`; the scheme is case-insensitive (Cohere's SDK and others vary).
- Auth is required once any active key exists, checked per request, so `lastrank keys create` on a
  running server takes effect immediately. Once required it stays required for the life of the
  process: revoking the last key must not silently open the server.
- Without any key the server is open, which `lastrank serve` only allows on a loopback host or with
  `--allow-unauthenticated` (see `open_mode_allowed`).
- A revoked key gets 403, an unknown or wrong one 401.
- A successful verification is remembered for `cache_ttl_s` seconds (--key-cache-s, default 5; keyed by the SHA-256 of the
  key, never the key), so a busy client costs no SQLite query and no thread hop per request. The price:
  revoking a key takes effect within that TTL on a running server, not at once (0 turns the cache off). Failures are never
  cached, so a new key works at once.
- A 401 for a missing key says what was received instead (a bare Authorization value, another scheme,
  an X-API-Key header) and what is expected, without echoing any part of a key.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time

from lastrank.errors import AuthError, PermissionDeniedError

_KEY_ID_RE = re.compile(r"lr-([0-9a-f]{12})-")


# How long a successful key verification is reused; also the longest a revoked key keeps working.
VERIFY_CACHE_TTL_S = 5.0
# Headers some clients send the key in; this server does not read them, but names them in its 401.
OTHER_KEY_HEADERS = ("x-api-key", "api-key")
EXPECTED = "send 'Authorization: Bearer <key>'"
_SCHEME_RE = re.compile(r"[A-Za-z]{1,20}")


def other_key_header(headers) -> str | None:
    """The name of a key header this server does not read, if the request carries one."""
    for name in OTHER_KEY_HEADERS:
        if headers.get(name):
            return name
    return None


def _missing_key_message(authorization: str | None, other_header: str | None) -> str:
    """Says what was received, never any part of a key: only a scheme word that cannot be a key is quoted."""
    if authorization and authorization.strip():
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return f"the Authorization header says 'Bearer' but holds no key; {EXPECTED}"
        if rest.strip() and _SCHEME_RE.fullmatch(scheme):
            return f"the Authorization header uses the '{scheme}' scheme, which this server does not accept; {EXPECTED}"
        return f"the Authorization header holds a value without the 'Bearer ' scheme; {EXPECTED}"
    if other_header:
        return f"missing API key: this server does not read the {other_header} header; {EXPECTED}"
    return f"missing API key: {EXPECTED}"


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


class Authenticator:
    def __init__(self, store, *, open_allowed: bool, cache_ttl_s: float = VERIFY_CACHE_TTL_S):
        self.store = store
        self.cache_ttl_s = cache_ttl_s
        self.open_allowed = open_allowed
        self._required = not open_allowed
        self._lock = threading.Lock()
        self._verified: dict[bytes, tuple[object, float]] = {}  # sha256(key) -> (KeyRecord, expiry)

    def auth_required(self) -> bool:
        """Called from a worker thread (it queries SQLite)."""
        if self._required:
            return True
        if self.store is not None and self.store.has_active_keys():
            with self._lock:
                self._required = True
            return True
        return False

    def cached(self, authorization: str | None):
        """-> the KeyRecord of a key verified less than `cache_ttl_s` ago, else None (then call
        `authenticate`). Cheap and safe on the event loop: no SQLite, one hash."""
        if not self._required:
            return None
        token = bearer_token(authorization)
        if token is None:
            return None
        hit = self._verified.get(_digest(token))
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def authenticate(self, authorization: str | None, *, other_key_header: str | None = None):
        """-> KeyRecord, or None when the server runs open. Raises AuthError / PermissionDeniedError.

        Synchronous (SQLite): run it in a worker thread. `other_key_header` names a key header this
        server does not read (see `other_key_header()`), for the 401's message.
        """
        if not self.auth_required():
            return None
        if self.store is None:
            raise AuthError("this server requires an API key but has no key store")
        token = bearer_token(authorization)
        if token is None:
            raise AuthError(_missing_key_message(authorization, other_key_header))
        record = self.store.verify_key(token)
        if record is not None and self.cache_ttl_s > 0:
            now = time.monotonic()
            with self._lock:
                if len(self._verified) > 1024:  # only valid keys get here, but stay bounded anyway
                    self._verified = {k: v for k, v in self._verified.items() if v[1] >= now}
                self._verified[_digest(token)] = (record, now + self.cache_ttl_s)
        if record is not None:
            return record
        if self._is_revoked(token):
            raise PermissionDeniedError("this API key has been revoked")
        raise AuthError("invalid API key")

    def _is_revoked(self, token: str) -> bool:
        # The key id is the public part of the key; only say "revoked" for an id the store knows as revoked.
        match = _KEY_ID_RE.match(token)
        if match is None:
            return False
        try:
            record = self.store.get_key(f"lr-{match.group(1)}")
        except Exception:
            return False
        return record is not None and getattr(record, "revoked_at", None) is not None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
