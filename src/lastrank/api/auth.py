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
"""

from __future__ import annotations

import re
import threading

from lastrank.errors import AuthError, PermissionDeniedError

_KEY_ID_RE = re.compile(r"lr-([0-9a-f]{12})-")


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


class Authenticator:
    def __init__(self, store, *, open_allowed: bool):
        self.store = store
        self.open_allowed = open_allowed
        self._required = not open_allowed
        self._lock = threading.Lock()

    def auth_required(self) -> bool:
        """Called from a worker thread (it queries SQLite)."""
        if self._required:
            return True
        if self.store is not None and self.store.has_active_keys():
            with self._lock:
                self._required = True
            return True
        return False

    def authenticate(self, authorization: str | None):
        """-> KeyRecord, or None when the server runs open. Raises AuthError / PermissionDeniedError.

        Synchronous (SQLite): run it in a worker thread.
        """
        if not self.auth_required():
            return None
        if self.store is None:
            raise AuthError("this server requires an API key but has no key store")
        token = bearer_token(authorization)
        if token is None:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        record = self.store.verify_key(token)
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
