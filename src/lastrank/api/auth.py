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
  key, never the key), so a busy client costs no database query and no thread hop per request (0 turns the
  cache off). Failures are never cached, so a new key works at once.
- Revocation still takes effect at once in this process and within REVOCATION_CHECK_S (0.5 s) across
  processes: the cache is trusted only while the store's revocation count (keys revoked so far, which only
  grows) was read less than REVOCATION_CHECK_S ago and the store object revoked nothing since; otherwise the
  request goes to a worker thread, which reads the count (one small query) and drops every cached key if it
  changed. A busy server pays one such query per REVOCATION_CHECK_S, not one verification per request.
- A 401 for a missing key says what was received instead (a bare Authorization value, another scheme,
  an X-API-Key header) and what is expected, without echoing any part of a key.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time

from lastrank.errors import AuthError, PermissionDeniedError

_KEY_ID_RE = re.compile(r"lr-([0-9a-f]{12})-")


# How long a successful key verification is reused.
VERIFY_CACHE_TTL_S = 5.0
# The longest a key revoked by another process keeps working here: the age past which the cache is checked
# against the store's revocation count before it is used.
REVOCATION_CHECK_S = 0.5
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
    def __init__(self, store, *, open_allowed: bool, cache_ttl_s: float = VERIFY_CACHE_TTL_S,
                 revocation_check_s: float = REVOCATION_CHECK_S, clock=time.monotonic):
        self.store = store
        self.cache_ttl_s = cache_ttl_s
        self.revocation_check_s = revocation_check_s
        self.clock = clock
        self.open_allowed = open_allowed
        self._required = not open_allowed
        self._lock = threading.Lock()
        self._verified: dict[bytes, tuple[object, float]] = {}  # sha256(key) -> (KeyRecord, expiry)
        # The store's revocation count when the cache was last checked against it, and when that was (clock);
        # and the store object's own revocations then (a revocation in this process shows there at once).
        self._revocations: int | None = None
        self._revocations_checked = -math.inf
        self._revocations_here = 0
        self._generation = 0  # +1 each time the cache is emptied: a verification older than that is not cached

    def auth_required(self) -> bool:
        """Called from a worker thread (it queries SQLite)."""
        if self._required:
            return True
        if self.store is not None and self.store.has_active_keys():
            with self._lock:
                self._required = True
            return True
        return False

    def open_now(self) -> bool:
        """True while the server runs open as far as this process has seen (no key yet). Cheap: no SQLite;
        a key created meanwhile is noticed by the next `auth_required`."""
        return not self._required

    def cached(self, authorization: str | None, *, refusing: bool = False):
        """-> the KeyRecord of a key verified less than `cache_ttl_s` ago, else None (then call
        `authenticate`). Cheap and safe on the event loop: no SQLite, one hash. None too while the cache is
        due for its revocation check (REVOCATION_CHECK_S), except when `refusing` (api/admission.py's early
        503): a refusal grants nothing, so a key revoked moments ago may get the busy 503 before its 403."""
        if not self._required:
            return None
        token = bearer_token(authorization)
        if token is None:
            return None
        hit = self._verified.get(_digest(token))
        now = self.clock()
        if hit is None or hit[1] < now or not (refusing or self._revocations_fresh(now)):
            return None
        return hit[0]

    def _revocations_fresh(self, now: float) -> bool:
        """The cache was checked against the store's revocations recently enough to be used as it is."""
        return (now - self._revocations_checked < self.revocation_check_s
                and getattr(self.store, "revocations_here", 0) == self._revocations_here)

    def _check_revocations(self) -> None:
        """Read the store's revocation count (worker thread) and empty the cache if a key was revoked since."""
        here = getattr(self.store, "revocations_here", 0)  # read first: a revocation after it is seen next time
        count = self.store.revocation_count()
        with self._lock:
            if count != self._revocations or here != self._revocations_here:
                self._verified = {}
                self._generation += 1
            self._revocations, self._revocations_here = count, here
            self._revocations_checked = self.clock()

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
        if self.cache_ttl_s > 0:
            if not self._revocations_fresh(self.clock()):
                self._check_revocations()
            hit = self.cached(authorization)  # e.g. the cache was only stale: no verification needed
            if hit is not None:
                return hit
        generation = self._generation
        record = self.store.verify_key(token)
        if record is not None and self.cache_ttl_s > 0:
            now = self.clock()
            with self._lock:
                if len(self._verified) > 1024:  # only valid keys get here, but stay bounded anyway
                    self._verified = {k: v for k, v in self._verified.items() if v[1] >= now}
                if generation == self._generation:  # else a revocation was seen meanwhile: verify it again next time
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
