"""The audit log page, its exports and the chain status (pages/audit.py, services/audit_log.py), over HTTP."""

from __future__ import annotations

import csv
import gc
import io
import json
import re
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from dashboard.pages import audit as audit_pages
from dashboard.services import audit_log
from dashboard.services.audit_log import detail_text
from dashboard.web.params import BadInput, parse_time
from engine.audit import verify
from engine.db import audit_events, audit_head, canonical_json, event_hash
from engine.messages import EndpointProtocol, User

ROOT_PASSWORD = "root-password-1"
PASSWORD = "user-password-1"
ENDPOINT_SECRET = "ep-s3cret-Passw0rd"
WRONG_PASSWORD = "wr0ng-guess-Passw0rd"


@pytest.fixture
def gw(live_gateway):
    live_gateway.create_user("root", ROOT_PASSWORD, admin=True)
    alice = live_gateway.create_user("alice", PASSWORD)
    endpoint = live_gateway.create_endpoint("synth", EndpointProtocol.SYNTHETIC, host="")
    live_gateway.grant(endpoint, alice)
    live_gateway.endpoint = endpoint
    live_gateway.alice = alice
    return live_gateway


def admin(gw: Any) -> httpx.Client:
    return gw.api_session("root", ROOT_PASSWORD)


def events(gw: Any, n: int, kind: str = "test_event") -> None:
    for i in range(n):
        gw.services.audit_event(kind, None, n=i)
    gw.engine.flush_audit()


def terminated_session(gw: Any, client: httpx.Client) -> str:
    session = gw.engine.open_session(gw.endpoint.spec, gw.alice)
    answer = client.post(f"/api/sessions/{session.session_id}/terminate")
    assert answer.status_code == 200, answer.text
    gw.engine.flush_audit()
    return session.session_id


def row_kinds(html: str) -> list[str]:
    return re.findall(r'<tr data-kind="([^"]+)"', html)


def row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-event-id="([0-9]+)"', html)]


# --- who may see it -----------------------------------------------------------------------------


def test_administrators_only(gw):
    anonymous = httpx.Client(base_url=gw.base_url)
    try:
        for path in ("/audit", "/audit/export.csv", "/audit/export.json?kind=login"):
            answer = anonymous.get(path, follow_redirects=False)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=/audit")
    finally:
        anonymous.close()
    alice = gw.api_session("alice", PASSWORD)
    for path in ("/audit", "/audit/export.csv", "/audit/export.json"):
        answer = alice.get(path, follow_redirects=False)
        assert answer.status_code == 403 and "for administrators" in answer.text
        assert "content-disposition" not in answer.headers
    assert alice.post("/audit/verify", data={"csrf_token": alice.headers["X-CSRF-Token"]}).status_code == 403
    assert admin(gw).get("/audit").status_code == 200


# --- the page -----------------------------------------------------------------------------------


def test_rows_newest_first_with_readable_time_and_detail(gw):
    client = admin(gw)
    sid = terminated_session(gw, client)
    html = client.get("/audit").text
    kinds = row_kinds(html)
    assert kinds[:3] == ["session_ended", "terminate", "session_started"]
    ids = row_ids(html)
    assert ids == sorted(ids, reverse=True)
    rows, _ = gw.services.audit_reader.events(kind="session_ended", limit=1)
    when = datetime.fromtimestamp(rows[0]["at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    ended = html[html.index('<tr data-kind="session_ended"'):]
    ended = ended[:ended.index("</tr>")]
    assert when in ended and "by=root reason=terminated" in ended
    assert f'<a href="?session={sid}" title="Only the events of session {sid}"><code>{sid[:8]}</code></a>' in ended
    terminate = html[html.index('<tr data-kind="terminate"'):]
    assert '<td class="actor">root</td>' in terminate[:terminate.index("</tr>")]
    # the kinds present in the log are the choices of the Kind filter
    select = html[html.index('<select name="kind">'):html.index("</select>")]
    assert re.findall(r'<option value="([^"]*)"', select) == ["", "login", "session_ended", "session_started",
                                                               "terminate"]


def test_filters_and_pages_of_fifty(gw):
    client = admin(gw)
    sid = terminated_session(gw, client)
    events(gw, 120)
    total = 120 + 4  # the events, login, session_started, terminate, session_ended
    first = client.get("/audit").text
    assert len(row_ids(first)) == 50 and f"Events 1–50 of {total}," in first
    assert 'rel="next"' in first and 'rel="prev"' not in first
    pages = [client.get(f"/audit?page={p}").text for p in (1, 2, 3)]
    seen = [i for page in pages for i in row_ids(page)]
    assert seen == list(range(total, 0, -1))
    assert f"Events 101–{total} of {total}" in pages[2] and 'rel="next"' not in pages[2]
    assert "Page 3 of 3" in pages[2]

    kind = client.get("/audit?kind=test_event&page=2").text
    assert set(row_kinds(kind)) == {"test_event"} and len(row_ids(kind)) == 50
    assert "Events 51–100 of 120 matching (of 124 in all)" in kind
    assert 'href="?kind=test_event&amp;page=3"' in kind and 'href="?kind=test_event"' in kind  # filters kept
    assert 'href="http://' in kind and "/audit/export.csv?kind=test_event" in kind

    assert row_kinds(client.get(f"/audit?session={sid}").text) == ["session_ended", "terminate", "session_started"]
    assert set(row_kinds(client.get("/audit?actor=root").text)) == {"login", "terminate", "session_ended"}
    assert set(row_kinds(client.get(f"/audit?actor={gw.alice.id}").text)) == {"session_started"}
    assert len(row_ids(client.get("/audit?since=2000-01-01&until=2999-12-31").text)) == 50
    assert 'data-testid="no-matching-events"' in client.get("/audit?until=2000-01-01").text
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert "Events 1–50 of 124 matching" in client.get(f"/audit?since={today}&until={today}").text
    past = client.get("/audit?page=99").text
    assert 'data-testid="no-matching-events"' in past and "past the last one" in past


@pytest.mark.parametrize("query, message", [
    ("since=yesterday", "since: "),
    ("until=2024-02-30", "until: "),
    ("since=2024-05-02&until=2024-05-01", "until: must be after since"),
    ("page=0", "page: between 1 and"),
    ("page=two", "page: a whole number"),
    ("kind=%3Cscript%3E", "kind: an event kind"),
])
def test_bad_filters_are_shown_and_answered_400(gw, query, message):
    answer = admin(gw).get(f"/audit?{query}")
    assert answer.status_code == 400
    error = re.search(r'data-testid="filter-error">([^<]*)<', answer.text).group(1)
    assert message in error.replace("&#39;", "'")
    assert "<script>" not in answer.text


def test_empty_log_tells_what_comes_next(gw):
    client = admin(gw)  # signing in writes a row: empty the log behind the store's back
    gw.engine.flush_audit()
    with gw.services.db.begin() as db:
        db.execute(audit_events.delete())
        db.execute(audit_head.delete())
    html = client.get("/audit").text
    assert 'data-testid="no-events"' in html and "The audit log is empty" in html
    assert "adding an endpoint" in html and "Chain intact, 0 rows" in html
    assert 'data-testid="audit-events"' not in html


# --- the chain's status ---------------------------------------------------------------------------


def test_chain_status_intact_then_broken(gw):
    client = admin(gw)
    terminated_session(gw, client)
    html = client.get("/audit").text
    status = html[html.index('data-testid="chain-status"'):]
    assert "Chain intact, 4 rows." in status[:2000]
    with gw.services.db.begin() as db:
        db.execute(audit_events.update().where(audit_events.c.id == 3).values(detail='{"forged":true}'))
    html = client.get("/audit").text
    status = html[html.index('data-testid="chain-status"'):][:2000]
    assert "Chain broken at row 3." in status and "row 3 was altered" in status


def test_a_large_log_is_checked_on_demand(gw, monkeypatch):
    monkeypatch.setattr(audit_pages, "AUTO_VERIFY_ROWS", 3)
    client = admin(gw)
    events(gw, 5)
    html = client.get("/audit?kind=test_event").text
    assert "Hash chain not checked yet." in html and 'data-testid="verify"' in html
    back = re.search(r'name="back" value="([^"]*)"', html).group(1)
    assert back == "kind=test_event"
    answer = client.post("/audit/verify", data={"csrf_token": client.headers["X-CSRF-Token"], "back": back},
                         follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].endswith("/audit?kind=test_event")
    html = client.get("/audit?kind=test_event").text
    assert "Chain intact, 6 rows." in html
    events(gw, 2)  # not checked again by itself: the last result stays until asked
    assert "Chain intact, 6 rows." in client.get("/audit").text
    # a hostile "back" keeps only the page's own parameters
    answer = client.post("/audit/verify", data={"csrf_token": client.headers["X-CSRF-Token"],
                                                "back": "next=//evil.example&kind=login"}, follow_redirects=False)
    assert answer.headers["location"].endswith("/audit?kind=login")
    # without the CSRF token: refused
    assert client.post("/audit/verify", data={"back": ""}, headers={"X-CSRF-Token": ""}).status_code == 403


# --- export ---------------------------------------------------------------------------------------


def _csv(answer: httpx.Response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(answer.text)))


def _secrets_everywhere(gw: Any, client: httpx.Client) -> None:
    """Events that touched passwords: an endpoint created with one (API), a failed sign-in
    with a wrong one, an endpoint password replaced, a user's session."""
    created = client.post("/api/endpoints", json={"name": "with-secret", "protocol": "ssh", "host": "10.0.0.1",
                                                  "username": "ops", "password": ENDPOINT_SECRET})
    assert created.status_code == 201
    client.put(f"/api/endpoints/{created.json()['endpoint']['id']}", json={"password": ENDPOINT_SECRET + "2"})
    refused = httpx.post(gw.url("/api/login"), json={"name": "alice", "password": WRONG_PASSWORD})
    assert refused.status_code == 401
    gw.api_session("alice", PASSWORD)
    terminated_session(gw, client)


def test_csv_export_of_everything_matches_the_log_and_verify(gw):
    client = admin(gw)
    _secrets_everywhere(gw, client)
    answer = client.get("/audit/export.csv")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="cosession-audit-[0-9]{8}T[0-9]{6}Z\.csv"',
                        answer.headers["content-disposition"])
    assert answer.text.splitlines()[0] == ",".join(audit_log.CSV_COLUMNS)
    rows = _csv(answer)
    gw.engine.flush_audit()
    stored, _ = gw.services.audit_reader.events(limit=10_000)
    assert int(answer.headers["x-total-count"]) == len(rows)
    # everything before the export; the export's own row (audit_exported) comes after it
    assert [s["kind"] for s in stored[len(rows):]] == ["audit_exported"]
    stored = stored[:len(rows)]
    assert [(int(r["id"]), r["hash"], r["prev_hash"]) for r in rows] == \
        [(s["id"], s["hash"], s["prev_hash"]) for s in stored]  # oldest first: the chain's order
    # every row recomputes to its hash from the exported values alone, and follows the one before
    previous = "0" * 64
    for r in rows:
        assert r["prev_hash"] == previous
        assert event_hash(r["prev_hash"], float(r["at"]), r["session_id"] or None, r["kind"], r["actor_id"] or None,
                          r["actor_name"] or None, r["detail"]) == r["hash"], r
        assert r["time"] == datetime.fromtimestamp(float(r["at"]), timezone.utc).isoformat(
            timespec="microseconds").replace("+00:00", "Z")
        previous = r["hash"]
    # every exported row, taken as an anchor, is in the chain that verify walks
    report = verify(gw.settings.database_url, anchors={int(r["id"]): r["hash"] for r in rows})
    assert report.ok and report.rows == len(rows) + 1
    for secret in (ENDPOINT_SECRET, WRONG_PASSWORD, PASSWORD, ROOT_PASSWORD):
        assert secret not in answer.text
    kinds = {r["kind"] for r in rows}
    assert {"endpoint_created", "endpoint_updated", "login_failed", "terminate"} <= kinds


def test_json_export_of_a_filtered_set(gw):
    client = admin(gw)
    _secrets_everywhere(gw, client)
    answer = client.get("/audit/export.json?kind=login_failed")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.headers["content-disposition"].startswith('attachment; filename="cosession-audit-')
    data = answer.json()
    assert data["total"] == 1 and data["order"] == "oldest_first"
    assert data["filters"] == {"session": None, "kind": "login_failed", "actor": None, "since": None, "until": None}
    (row,) = data["events"]
    assert row["actor_name"] is None and row["detail"] == {"name": "alice", "reason": "invalid_credentials",
                                                           "remote": "127.0.0.1"}
    assert event_hash(row["prev_hash"], row["at"], row["session_id"], row["kind"], row["actor_id"],
                      row["actor_name"], canonical_json(row["detail"])) == row["hash"]
    everything = client.get("/api/audit/export?format=json").text
    for secret in (ENDPOINT_SECRET, WRONG_PASSWORD, PASSWORD, ROOT_PASSWORD):
        assert secret not in everything
    # an export is itself audited, with what was asked
    gw.engine.flush_audit()
    exported, _ = gw.services.audit_reader.events(kind="audit_exported", limit=10)
    assert [(e["actor_name"], e["detail"]["format"], e["detail"]["filters"]["kind"]) for e in exported][:1] == \
        [("root", "json", "login_failed")]


def test_export_streams_page_by_page_and_keeps_the_set_it_started_with(gw, monkeypatch):
    monkeypatch.setattr(audit_log, "EXPORT_PAGE", 7)
    reads = []
    reader = gw.services.audit_reader
    original = reader.events

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append((kwargs.get("limit"), kwargs.get("offset")))
        if len(reads) == 2:  # rows written while the export runs are not part of it
            gw.services.audit_event("written_meanwhile", None)
            gw.engine.flush_audit()
        return original(*args, **kwargs)

    monkeypatch.setattr(reader, "events", counting)
    client = admin(gw)
    events(gw, 30)
    rows = _csv(client.get("/audit/export.csv?kind=test_event"))
    assert [json.loads(r["detail"])["n"] for r in rows] == list(range(30))
    assert reads == [(7, 0), (7, 7), (7, 14), (7, 21), (7, 28)]
    monkeypatch.setattr(reader, "events", original)
    data = client.get("/audit/export.json").json()
    assert "written_meanwhile" in {e["kind"] for e in data["events"]}
    assert len(data["events"]) == data["total"]


def test_export_neutralises_spreadsheet_formulas_in_csv_only(gw):
    client = admin(gw)
    hostile = "=HYPERLINK(\"http://evil.example\")"
    httpx.post(gw.url("/api/login"), json={"name": hostile, "password": "whatever-1"})
    gw.services.audit_event("probe2", User("x", "@sum(1)", False), note="-1+1")
    gw.engine.flush_audit()
    rows = {r["kind"]: r for r in _csv(client.get("/audit/export.csv"))}
    assert rows["probe2"]["actor_name"] == "'@sum(1)" and rows["probe2"]["detail"] == '{"note":"-1+1"}'
    assert json.loads(rows["login_failed"]["detail"])["name"] == hostile  # inside JSON text: not a formula
    data = client.get("/audit/export.json").json()
    assert {e["kind"]: e for e in data["events"]}["probe2"]["actor_name"] == "@sum(1)"


def test_bad_export_filters(gw):
    client = admin(gw)
    answer = client.get("/audit/export.csv?since=someday")
    assert answer.status_code == 400 and "since" in answer.text and "content-disposition" not in answer.headers
    answer = client.get("/api/audit/export?format=csv&until=2024-99-01")
    assert answer.status_code == 400 and answer.json()["parameter"] == "until"


# --- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, end, expected", [
    ("", False, None),
    ("2024-05-01", False, 1714521600.0),
    ("2024-05-01", True, 1714608000.0),  # a date as an upper bound: the whole day
    ("2024-05-01T12:00", False, 1714564800.0),
    ("2024-05-01T12:00:00Z", False, 1714564800.0),
    ("2024-05-01T14:00:00+02:00", False, 1714564800.0),
    ("2024-05-01T14:00 02:00", False, 1714564800.0),  # a "+" that a query string made a space
    ("2024-05-01 12:00", False, 1714564800.0),
    ("1714564800", False, 1714564800.0),
    ("1714564800.5", False, 1714564800.5),
])
def test_parse_time(text, end, expected):
    assert parse_time(text, "since", end_of_day=end) == expected


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "-5", "1e999", "2024-05-01T25:00", "x" * 50,
                                  "99999999999999"])
def test_parse_time_refuses(text):
    with pytest.raises(BadInput) as refused:
        parse_time(text, "until")
    assert refused.value.name == "until"


def test_detail_text():
    assert detail_text({"reason": "terminated", "by": "root"}) == "by=root reason=terminated"
    assert detail_text({"note": "two words", "n": 3, "ok": True, "none": None, "list": ["a", "b"]}) == \
        'list=a,b n=3 none=null note="two words" ok=true'
    assert detail_text({"filters": {"kind": "x", "actor": None, "at": {"s": 1}}, "empty": "", "none": {}}) == \
        'empty="" filters.at.s=1 filters.kind=x none={}'


def test_a_client_that_leaves_mid_download_costs_nothing(gw, monkeypatch):
    monkeypatch.setattr(audit_log, "EXPORT_PAGE", 5)
    client = admin(gw)
    events(gw, 300)
    for path in ("/audit/export.csv", "/audit/export.json"):
        with client.stream("GET", path) as answer:
            assert answer.status_code == 200
            next(answer.iter_bytes())
        # the reads stop; the server goes on answering
    gc.collect()
    assert len(_csv(client.get("/audit/export.csv?kind=test_event"))) == 300
