"""Who may act on the dashboard: an operator is whoever holds the token the node writes
at start into its data dir (``ui-token``, mode 600: readable by the node's own user
only, who can already do anything the node can). Nobody else is offered an action,
and an action is refused without all of:

- a session (cookie ``concord_ui``: HttpOnly, SameSite=Strict), got by presenting the
  token once at ``/login``;
- the session's own form token in the request (a page of another site cannot read
  it, so it cannot make the browser post an action);
- a ``Host`` that is the dashboard's own address, and an ``Origin``, if the browser
  sends one, of that host (no DNS rebinding, no cross-site post).

Sessions live in memory (a restart logs everyone out) for ``SESSION_S``.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TOKEN_FILE = "ui-token"
COOKIE = "concord_ui"
SESSION_S = 12 * 3600
SESSIONS_MAX = 64


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    form_token: str
    expires: float


class Operators:
    def __init__(self, data_dir: Path) -> None:
        self.token = secrets.token_urlsafe(32)
        self.token_path = Path(data_dir) / TOKEN_FILE
        self.token_path.unlink(missing_ok=True)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(self.token + "\n")
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def login(self, token: str) -> Session | None:
        """A new session for the token's holder; None for a wrong token."""
        if not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            return None
        session = Session(
            sid=secrets.token_urlsafe(32),
            form_token=secrets.token_urlsafe(32),
            expires=time.monotonic() + SESSION_S,
        )
        with self._lock:
            self._drop_expired()
            while len(self._sessions) >= SESSIONS_MAX:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session.sid] = session
        return session

    def session(self, cookie_header: str) -> Session | None:
        """The live session the request's cookie names, if any."""
        sid = _cookie(cookie_header, COOKIE)
        if not sid:
            return None
        with self._lock:
            self._drop_expired()
            for known, session in self._sessions.items():
                if hmac.compare_digest(known.encode(), sid.encode()):
                    return session
        return None

    def logout(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.sid, None)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]


def form_token_ok(session: Session, given: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), session.form_token.encode())


def set_cookie(session: Session) -> str:
    return f"{COOKIE}={session.sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_S}"


def clear_cookie() -> str:
    return f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def same_origin(host_header: str, origin_header: str, allowed_hosts: frozenset[str]) -> bool:
    """The request is for this dashboard (``Host`` one of ``allowed_hosts``; empty: any)
    and, if the browser says where the page came from, from this dashboard too."""
    if allowed_hosts and host_header not in allowed_hosts:
        return False
    return not origin_header or origin_header == f"http://{host_header}"
