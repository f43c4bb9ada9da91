"""Who may call the API: tokens with a role, dashboard sessions, and the cross-site check.

Tokens come from `BATCHCTL_API_TOKEN` (role operate) and from `[batchctl.api.tokens]` in
config.toml, each `NAME = {token = "...", role = "read" | "operate"}`; a token may be stored as
`sha256:<hex digest>` instead of its text. Every token is kept as its SHA-256 digest and a
presented token is compared with all of them by `hmac.compare_digest`, so neither the
comparison nor the number of tokens tried leaks where a guess went wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from batchctl.defaults import ENV_API_TOKEN
from batchctl.errors import ConfigError

READ = "read"
OPERATE = "operate"
ROLES = (READ, OPERATE)
SESSION_COOKIE = "batchctl_session"
SESSION_LIFETIME = 12 * 3600.0  # seconds a dashboard session lasts (a night's watch)
GENERATED_TOKEN_NAME = "generated"  # the name of the token serve makes when none is configured
ENV_TOKEN_NAME = "env"  # the name of BATCHCTL_API_TOKEN's token (an execution's trigger detail)
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


class HttpRefusal(Exception):
    """Refused."""

    status = 400

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotSignedIn(HttpRefusal):
    """Sign in: no valid API token or session."""

    status = 401


class Forbidden(HttpRefusal):
    """This token may only read."""

    status = 403


class CrossSite(Forbidden):
    """A state-changing request from another site is refused."""


class BadRequest(HttpRefusal):
    """Malformed request."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and its role."""

    name: str
    role: str

    @property
    def may_operate(self) -> bool:
        return self.role == OPERATE


@dataclass(frozen=True)
class _Token:
    name: str
    role: str
    digest: bytes


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Tokens:
    """The configured tokens; `check(text)` says whose a presented token is."""

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens

    def __len__(self) -> int:
        return len(self._tokens)

    @classmethod
    def load(cls, api: Mapping[str, Any], env: Mapping[str, str], source: object = None) -> Tokens:
        """The tokens of a `[batchctl.api]` table and the environment; ConfigError (exit 5) for
        a malformed table."""
        where = f"{source}: " if source else ""
        unknown = set(api) - {"tokens"}
        if unknown:
            raise ConfigError(f"{where}unknown key 'batchctl.api.{sorted(unknown)[0]}' (known: tokens)")
        table = api.get("tokens", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}'batchctl.api.tokens' must be a table")
        tokens = []
        for name, entry in table.items():
            key = f"{where}'batchctl.api.tokens.{name}'"
            if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or not entry["token"]:
                raise ConfigError(f'{key} must be {{token = "...", role = "read" or "operate"}}')
            extra = set(entry) - {"token", "role"}
            if extra:
                raise ConfigError(f"{key}: unknown key {sorted(extra)[0]!r} (known: token, role)")
            role = entry.get("role", READ)
            if role not in ROLES:
                raise ConfigError(f"{key}: role must be 'read' or 'operate', not {role!r}")
            text = entry["token"]
            hashed = _HASHED.match(text)
            if text.startswith("sha256:") and not hashed:
                raise ConfigError(f"{key}: 'sha256:' must be followed by 64 hex digits")
            value = bytes.fromhex(hashed.group(1)) if hashed else digest(text)
            tokens.append(_Token(str(name), role, value))
        if env.get(ENV_API_TOKEN):
            tokens.append(_Token(ENV_TOKEN_NAME, OPERATE, digest(env[ENV_API_TOKEN])))
        return cls(tokens)

    def generate(self) -> str:
        """Add a random operate token (when none is configured) and return its text."""
        token = secrets.token_urlsafe(32)
        self._tokens.append(_Token(GENERATED_TOKEN_NAME, OPERATE, digest(token)))
        return token

    def check(self, presented: str) -> Principal | None:
        """The principal whose token this is, or None. Compares with every token, in constant
        time each."""
        wanted = digest(presented)
        found = None
        for token in self._tokens:
            if hmac.compare_digest(wanted, token.digest) and found is None:
                found = Principal(token.name, token.role)
        return found


class Sessions:
    """Dashboard sessions: a random id in an HttpOnly, SameSite=Strict cookie, kept in memory
    (a restart of serve signs everyone out)."""

    def __init__(self, lifetime: float = SESSION_LIFETIME) -> None:
        self.lifetime = lifetime
        self._sessions: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def create(self, principal: Principal) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            self._sessions[session] = (principal, now + self.lifetime)
        return session

    def get(self, session: str) -> Principal | None:
        with self._lock:
            found = self._sessions.get(session)
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    def drop(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a browser's `Origin` (or `Referer`) names the host the request was sent to.
    Behind a reverse proxy the proxy must pass the original Host header on."""
    if not origin or not host:
        return False
    match = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]+)", origin)
    return bool(match) and match.group(1).lower() == host.lower()  # type: ignore[union-attr]
