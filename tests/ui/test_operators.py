"""Who may act on the dashboard (coordinator/ui/operators.py), without a server."""

from __future__ import annotations

import stat
from pathlib import Path

from coordinator.ui.operators import (
    COOKIE,
    Operators,
    form_token_ok,
    same_origin,
    set_cookie,
)


def test_the_token_file_is_the_nodes_users_alone_and_new_at_each_start(tmp_path: Path) -> None:
    first = Operators(tmp_path)
    assert stat.S_IMODE(first.token_path.stat().st_mode) == 0o600
    assert first.token_path.read_text().strip() == first.token
    second = Operators(tmp_path)
    assert second.token != first.token and first.login(first.token) is not None
    assert second.login(first.token) is None  # the old token opens nothing


def test_a_session_needs_the_token_and_its_cookie(tmp_path: Path) -> None:
    operators = Operators(tmp_path)
    assert operators.login("") is None and operators.login("wrong") is None
    session = operators.login(operators.token)
    assert session is not None
    cookie = set_cookie(session)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert operators.session(f"other=1; {COOKIE}={session.sid}") == session
    assert operators.session(f"{COOKIE}=forged") is None and operators.session("") is None
    assert form_token_ok(session, session.form_token)
    assert not form_token_ok(session, "") and not form_token_ok(session, "guess")
    operators.logout(session)
    assert operators.session(f"{COOKIE}={session.sid}") is None


def test_only_this_dashboards_address_and_origin() -> None:
    hosts = frozenset({"127.0.0.1:8080", "localhost:8080"})
    assert same_origin("127.0.0.1:8080", "", hosts)
    assert same_origin("localhost:8080", "http://localhost:8080", hosts)
    assert not same_origin("evil.example:8080", "", hosts)  # DNS rebinding
    assert not same_origin("127.0.0.1:8080", "http://evil.example", hosts)  # cross-site post
    assert not same_origin("127.0.0.1:8080", "null", hosts)
