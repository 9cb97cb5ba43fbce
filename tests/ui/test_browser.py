"""The dashboard in a real browser: headless Chromium from the system packages (never
a downloaded one), driven by Playwright, against a real 3-node cluster started with
``--ui`` and two key-value agents (tests/integration/kv_agent.py).

Every page is opened and checked for what it must show; the rounds page is watched
while a new transaction runs, and must show it without a reload. Set UI_SCREENSHOTS
to a directory (docs/images) to keep a screenshot of each page there.

Skipped, saying why, only where Playwright or Chromium is missing or Chromium cannot
start (``apt-get install chromium``; scripts/bootstrap installs it as root).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.runtime.local_cluster import CLIENT, LocalCluster
from coordinator.security.identity import Role
from participant_sdk import SagaStep, SyncConcordClient, TransactionAborted
from tests.integration.conftest import AgentProcess, agent_processes, wait_for

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (the dev extra has it)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_FLAGS, timeout=30_000
            )
        except Error as error:
            pytest.skip(f"Chromium at {executable} cannot start: {str(error).splitlines()[0]}")
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[dict[str, Any]]:
    """A 3-node cluster with dashboards, agents p1 and p2, one committed transaction and
    one that p2 voted NO on."""
    root = tmp_path_factory.mktemp("ui")
    cluster = LocalCluster(root / "cluster", 3, ui=True)
    try:
        cluster.start()
        cluster.wait_all_serving()
        with (
            agent_processes(cluster, root, ("p1", "p2")) as agents,
            SyncConcordClient(
                cluster.grpc_addresses,
                tls=cluster.transport(Role.CLIENT, CLIENT),
                call_timeout_s=5.0,
            ) as client,
        ):
            committed, refused = f"t-ok-{uuid.uuid4().hex[:6]}", f"t-no-{uuid.uuid4().hex[:6]}"
            txn = client.begin(["p1", "p2"], txn_id=committed)
            for agent in agents.values():
                agent.stage(txn, f"k-{committed}", "v")
            client.commit(committed)
            txn = client.begin(["p1", "p2"], txn_id=refused)
            agents["p1"].stage(txn, f"k-{refused}", "v")
            agents["p2"].stage(txn, f"k-{refused}", "v", vote="no")
            with pytest.raises(TransactionAborted):
                client.commit(refused)
            yield {
                "cluster": cluster,
                "agents": agents,
                "client": client,
                "committed": committed,
                "refused": refused,
                "url": cluster.ui_urls[cluster.leader()],
            }
    finally:
        cluster.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    try:
        yield tab
    finally:
        context.close()


def _shot(page: Any, name: str) -> None:
    where = os.environ.get("UI_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"dashboard-{name}.png"), full_page=True)


def test_cluster_page_shows_every_member_up_and_the_leader(
    world: dict[str, Any], page: Any
) -> None:
    cluster: LocalCluster = world["cluster"]
    leader = cluster.leader()
    page.goto(world["url"])
    assert page.locator("#leader").inner_text() == leader
    for node_id in cluster.nodes:
        row = page.locator(f"tr[data-node={node_id}]")
        assert "up" in row.inner_text()
    assert "leader" in page.locator(f"tr[data-node={leader}]").inner_text()
    _shot(page, "cluster")


def test_rounds_page_filters_and_updates_live(world: dict[str, Any], page: Any) -> None:
    page.goto(world["url"] + "rounds")
    page.wait_for_selector(f"tr[data-round={world['committed']}]")
    assert page.locator(f"tr[data-round={world['refused']}]").count() == 1
    page.select_option("select[name=state]", "ABORT")
    page.click("form.filter button")
    page.wait_for_url("**/rounds?state=ABORT*")
    assert page.locator(f"tr[data-round={world['refused']}]").count() == 1
    assert page.locator(f"tr[data-round={world['committed']}]").count() == 0

    # Live: a transaction begun now shows up on the open page, in doubt at the top
    # while p1 is paused (p2 voted YES), without a reload; resumed, it commits.
    page.goto(world["url"] + "rounds")
    live = f"t-live-{uuid.uuid4().hex[:6]}"
    client: SyncConcordClient = world["client"]
    agents: dict[str, AgentProcess] = world["agents"]
    txn = client.begin(["p1", "p2"], txn_id=live, timeout_s=30)
    agents["p1"].stage(txn, f"k-{live}", "v")
    agents["p2"].stage(txn, f"k-{live}", "v")
    agents["p1"].pause()  # SIGSTOP: p1 votes once resumed; meanwhile p2's YES waits
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            decided = pool.submit(client.commit, live)
            row = page.wait_for_selector(f"tr[data-round={live}].attention")
            assert row is not None and "in doubt" in row.inner_text()
            first = page.locator("tbody tr").first.get_attribute("data-round")
            assert first == live, f"in doubt round not first: {first}"
            _shot(page, "rounds")
            agents["p1"].resume()
            decided.result(timeout=60)
    finally:
        agents["p1"].resume()  # SIGCONT: idempotent
    page.wait_for_selector(f"tr[data-round={live}]:not(.attention) >> text=COMMIT")


def test_round_page_shows_the_timeline(world: dict[str, Any], page: Any) -> None:
    page.goto(world["url"] + "rounds")
    page.click(f"a:text-is('{world['refused']}')")
    page.wait_for_url(f"**/round/{world['refused']}")
    text = page.locator("main").inner_text()
    for expected in ("p2 voted NO", "decided ABORT", "p1 acknowledged", "p2 acknowledged"):
        assert expected in text, f"{expected!r} not on the round's page: {text}"
    assert "ABORT" in page.locator("#state").inner_text()
    _shot(page, "round")


def test_participants_page(world: dict[str, Any], page: Any) -> None:
    page.goto(world["url"] + "participants")
    for pid in ("p1", "p2"):
        row = page.locator(f"tr[data-participant={pid}]").inner_text()
        assert "127.0.0.1:" in row, row
    _shot(page, "participants")


def test_audit_page_heads_and_verification(world: dict[str, Any], page: Any) -> None:
    page.goto(world["url"] + "audit")
    assert "intact" in page.locator("#verdict").inner_text()
    assert page.locator("tbody tr").count() >= 3
    _shot(page, "audit")


def test_throughput_page(world: dict[str, Any], page: Any) -> None:
    page.goto(world["url"] + "throughput")
    # A sample every 5 s: the second one makes the first interval (live refresh).
    page.wait_for_selector("svg.chart", timeout=WAIT_MS)
    assert "rounds decided" in page.locator("main").inner_text()
    _shot(page, "throughput")


def test_an_operator_aborts_a_round_after_confirming(world: dict[str, Any], page: Any) -> None:
    """Anonymous: no action offered, and one asked for directly is refused. With the
    node's token: the round page offers Abort, which asks first, then aborts."""
    cluster: LocalCluster = world["cluster"]
    client: SyncConcordClient = world["client"]
    agents: dict[str, AgentProcess] = world["agents"]
    stuck = f"t-stuck-{uuid.uuid4().hex[:6]}"
    txn = client.begin(["p1", "p2"], txn_id=stuck, timeout_s=60)
    agents["p1"].stage(txn, f"k-{stuck}", "v")
    agents["p2"].stage(txn, f"k-{stuck}", "v")
    agents["p1"].pause()  # SIGSTOP: p1 answers no Prepare until resumed; p2 votes YES
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            decided = pool.submit(client.commit, stuck)
            leader = cluster.leader()
            url = cluster.ui_urls[leader]
            page.goto(f"{url}round/{stuck}")
            page.wait_for_selector("#state >> text=in doubt")
            assert page.locator("a.action").count() == 0
            assert "operator log in" in page.locator("header").inner_text()
            assert page.request.get(f"{url}round/{stuck}/abort").status == 403
            assert (
                page.request.post(f"{url}round/{stuck}/abort", form={"reason": "x"}).status == 403
            )

            token = cluster.ui_token_path(leader).read_text().strip()
            assert page.goto(f"{url}login?token=wrong-{token}").status == 403
            page.goto(f"{url}login?token={token}")
            assert "operator" in page.locator("header .ro").inner_text()
            # A post without this session's form token (as another site would make) is refused.
            refused = page.request.post(f"{url}round/{stuck}/abort", form={"form_token": "guess"})
            assert refused.status == 403

            page.goto(f"{url}round/{stuck}")
            page.click("a.action:text-is('Abort…')")
            page.wait_for_url(f"**/round/{stuck}/abort")
            page.fill("input[name=reason]", "stuck on p1")
            _shot(page, "confirm")
            page.click("#confirm")
            assert page.locator("#result").inner_text() == f"{stuck}: ABORT"
            agents["p1"].resume()
            with pytest.raises(TransactionAborted):
                decided.result(timeout=60)
    finally:
        agents["p1"].resume()  # SIGCONT: idempotent
    page.goto(f"{url}round/{stuck}")
    text = page.locator("main").inner_text()
    assert "abort requested by an operator: operator: stuck on p1" in text, text
    assert "decided ABORT" in text


def _login(page: Any, cluster: LocalCluster, node_id: str) -> str:
    url: str = cluster.ui_urls[node_id]
    page.goto(f"{url}login?token={cluster.ui_token_path(node_id).read_text().strip()}")
    assert "operator" in page.locator("header .ro").inner_text()
    return url


def test_an_operator_resolves_an_escalated_saga_step(world: dict[str, Any], page: Any) -> None:
    """A saga whose step 1 fails and whose step 0 cannot be compensated is held,
    escalated: at the top of the rounds, on its participant's row; an operator resolves
    the step from the saga's page, and the saga finishes."""
    cluster: LocalCluster = world["cluster"]
    client: SyncConcordClient = world["client"]
    agents: dict[str, AgentProcess] = world["agents"]
    saga_id = f"saga-{uuid.uuid4().hex[:6]}"
    steps = [SagaStep(participant_id=p, action="put", payload={"saga": saga_id}) for p in agents]
    try:
        agents["p2"].set_saga_mode(fail=[f"{saga_id}/1"])
        agents["p1"].set_saga_mode(compensation_fails=True)
        held = client.run_saga(steps, saga_id=saga_id, step_timeout_s=10)
        assert held.escalated == [0] and not held.finished, held
        url = cluster.ui_urls[cluster.leader()]
        page.goto(f"{url}rounds")
        assert page.locator("tbody tr").first.get_attribute("data-round") == saga_id
        assert "escalated" in page.locator(f"tr[data-round={saga_id}]").inner_text()
        page.goto(f"{url}participants")
        assert saga_id in page.locator("tr[data-participant=p1]").inner_text()

        url = _login(page, cluster, cluster.leader())
        page.goto(f"{url}round/{saga_id}")
        page.click("a.action:text-is('Resolve…')")
        page.wait_for_url(f"**/round/{saga_id}/resolve?step=0")
        page.fill("input[name=reason]", "refunded by hand")
        page.click("#confirm")
        assert "step 0 resolved" in page.locator("#result").inner_text()
    finally:
        agents["p1"].set_saga_mode()
        agents["p2"].set_saga_mode()
    wait_for("the saga to finish", lambda: client.saga(saga_id).finished)
    page.goto(f"{url}round/{saga_id}")
    assert "COMPENSATED" in page.locator("#state").inner_text()
    text = page.locator("main").inner_text()
    assert "RESOLVED" in text and "resolved by an operator: operator: refunded by hand" in text


def test_unknown_page_and_bad_filter_answer_in_one_line(world: dict[str, Any], page: Any) -> None:
    response = page.goto(world["url"] + "rounds?age=soon")
    assert response is not None and response.status == 400
    assert "age 'soon'" in page.locator(".error").inner_text()
    response = page.goto(world["url"] + "nope")
    assert response is not None and response.status == 404
