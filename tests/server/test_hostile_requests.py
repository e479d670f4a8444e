"""Hostile requests through the real app: a 4xx with a code, never a 5xx, nothing stored changed.

Every console API write and every sync endpoint gets garbage, deeply nested
and compressed bodies; every list filter gets SQL metacharacters; exports
get path traversal (issue 8, point 5). "Nothing changed" is a hash of every
row of every table (`store_digest`), not of the tables we thought of.
"""

import gzip
import hashlib
import re

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from schemas.console.admin import CodeRequest, RevokeRequest
from schemas.console.assignment import AssignRequest, DeadlineRequest
from schemas.console.conflicts import SettleRequest
from schemas.console.quarantine import AcknowledgeRequest, ReapplyRequest
from schemas.console.triage import ConvertRequest, DismissRequest
from server.console import signin
from sync import decoding
from sync.changes import encode_change
from sync.envelope import PULL_ENVELOPE, PUSH_ENVELOPE
from sync.errors import LianxinError
from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU

PASSWORD = "long enough password"
# Bookkeeping that any request may write, and why it is no stored data:
BOOKKEEPING = {
    "nonces": "each signed request spends its nonce, refused or not",
    "sessions": "a console request refreshes its session's idle timer",
}
SOME = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def store_digest(db, leave_out=()):
    """A hash of every row of every table but `BOOKKEEPING` (and `leave_out`)."""
    digest = hashlib.sha256()
    tables = [
        name
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")
        if name not in BOOKKEEPING and name not in leave_out and not name.startswith("sqlite_")
    ]
    for table in tables:
        cursor = db.execute(f'SELECT * FROM "{table}"')
        # When a device was last seen is bookkeeping of the request itself, like its nonce.
        kept = [i for i, c in enumerate(cursor.description) if c[0] != "last_seen_ms"]
        rows = sorted(repr([row[i] for i in kept]) for row in cursor)
        digest.update(f"{table}:{len(rows)}\n".encode())
        for row in rows:
            digest.update(row.encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def office(tmp_path_factory):
    """One office for the module (Hypothesis runs many examples on it): nothing may change it."""
    with running_office(tmp_path_factory.mktemp("hostile")) as office:
        sun = office.enroll("mediator")
        sun.push([sun.change("case", "k-gongshu", {"title": "Drains", "location": GONGSHU})])
        yield office


def signed_in_as(office, role, http):
    """Sign a fresh `role` in on `http`; the CSRF token for its writes."""
    user = office.directory.add_user(f"hostile {role}", role, ["Hangzhou"], office.wall.ms)
    signin.set_password(office.directory, user.user_id, PASSWORD)
    answer = http.post(
        "/console/login",
        data={"user_id": user.user_id, "password": PASSWORD},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return http.get("/api/me").json()["csrf"]


@pytest.fixture(scope="module")
def supervisor_csrf(office):
    return signed_in_as(office, "supervisor", office.http)


CONSOLE_WRITES = {
    "/api/conflicts/settle": SettleRequest,
    "/api/quarantine/acknowledge": AcknowledgeRequest,
    "/api/quarantine/reapply": ReapplyRequest,
    "/api/warnings/w-none/convert": ConvertRequest,
    "/api/warnings/w-none/dismiss": DismissRequest,
    "/api/cases/k-gongshu/mediators": AssignRequest,
    "/api/deadlines": DeadlineRequest,
}
ADMIN_WRITES = {"/api/admin/codes": CodeRequest, "/api/admin/devices/d-none/revoke": RevokeRequest}
JSON_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)
GARBAGE = st.one_of(
    st.binary(max_size=200),
    JSON_ANY.map(msgspec.json.encode),
    st.integers(1000, 30_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.binary(min_size=1, max_size=10).map(lambda junk: b'{"reason": "' + junk + b'"}'),
    st.sampled_from([b"", b"null", b"{}", b"[]", b'{"choice": "\xc2\xb2"}', b"\xef\xbb\xbf{}"]),
)


def refused_with_a_code(answer):
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    body = answer.json()
    assert re.fullmatch(r"[a-z_]+", body["error"]), body
    return body["error"]


@SOME
@given(path=st.sampled_from(sorted(CONSOLE_WRITES)), body=GARBAGE)
def test_garbage_to_every_console_write_is_refused_and_changes_nothing(
    office, supervisor_csrf, path, body
):
    try:  # a body that happens to be a valid request is no garbage
        decoding.decode(body, CONSOLE_WRITES[path], json=True)
        assume(False)
    except LianxinError:
        pass
    stored = store_digest(office.store.db, leave_out={"audit"})
    answer = office.http.post(
        path, content=body, headers={"x-csrf-token": supervisor_csrf, "content-type": "a/json"}
    )
    assert refused_with_a_code(answer) in {"malformed", "too_deep", "too_large"}
    assert store_digest(office.store.db, leave_out={"audit"}) == stored


def test_garbage_to_admin_writes_is_refused_and_changes_nothing(office, supervisor_csrf):
    supervisor_cookies = office.http.cookies
    office.http.cookies = {}
    try:
        csrf = signed_in_as(office, "admin", office.http)
        stored = store_digest(office.store.db, leave_out={"audit"})
        for path in ADMIN_WRITES:
            for body in (b"\xff\xfe", b"[" * 5000, b'{"user_id": 7}', b'{"reason": []}'):
                answer = office.http.post(path, content=body, headers={"x-csrf-token": csrf})
                assert refused_with_a_code(answer) in {"malformed", "too_deep"}
        assert store_digest(office.store.db, leave_out={"audit"}) == stored
    finally:  # the module's supervisor stays signed in for the tests after this one
        office.http.cookies = supervisor_cookies


def test_a_settled_value_nested_thousands_deep_is_too_deep(office, supervisor_csrf):
    stored = store_digest(office.store.db)
    body = b'{"record_type": "case", "record_id": "k-gongshu", "field": "title", "choice":'
    body += b' "custom", "reason": "x", "value": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    answer = office.http.post(
        "/api/conflicts/settle", content=body, headers={"x-csrf-token": supervisor_csrf}
    )
    assert (answer.status_code, answer.json()["error"]) == (413, "too_deep")
    assert store_digest(office.store.db) == stored


def test_a_change_nested_thousands_deep_in_a_signed_batch_is_too_deep(office):
    phone = office.enroll("mediator")
    change = phone.change("case", "k-deep", {"title": "DEEP"})
    raw = msgspec.msgpack.encode(change).replace(b"\xa4DEEP", b"\x91" * 50_000 + b"\x01")
    stored = store_digest(office.store.db)
    answer = phone.post("/v1/sync/push", phone.push_body([], raw=[raw], batch_id="b-deep"))
    assert answer.status_code == 413
    assert msgspec.msgpack.decode(answer.content) == {
        "error": "too_deep",
        "detail": "$.changes[0] is nested too deeply to decode",
    }
    assert store_digest(office.store.db) == stored


# Ten megabytes of zeros: ten kilobytes on the wire, inflated only by a server that accepts it.
BOMB = gzip.compress(bytes(10 * 1024 * 1024))


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP ", "identity, gzip"])
def test_compressed_bodies_are_refused_before_anything_reads_them(
    office, supervisor_csrf, encoding
):
    assert len(BOMB) < 64 * 1024  # under the body limit: only the encoding refuses it
    phone = office.enroll("mediator")
    stored = store_digest(office.store.db)
    for path in ["/v1/sync/push", "/v1/sync/pull"]:
        headers = {**phone.headers(path, BOMB), "content-encoding": encoding}
        answer = office.http.post(path, content=BOMB, headers=headers)
        assert answer.status_code == 415
        assert msgspec.msgpack.decode(answer.content)["error"] == "unsupported_encoding"
    for path in ["/v1/enroll", "/api/deadlines"]:
        headers = {"content-encoding": encoding, "x-csrf-token": supervisor_csrf}
        answer = office.http.post(path, content=BOMB, headers={**headers, "accept": "a/json"})
        assert (answer.status_code, answer.json()["error"]) == (415, "unsupported_encoding")
    assert store_digest(office.store.db) == stored


def test_an_identity_encoding_is_no_compression(office):
    phone = office.enroll("mediator")
    body = msgspec.msgpack.encode({"cursor": None, "limit": 5})
    headers = {**phone.headers("/v1/sync/pull", body), "content-encoding": "identity"}
    assert office.http.post("/v1/sync/pull", content=body, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v2/sync/push", None),
        ("/v2/sync/push", "application/msgpack"),
        ("/v2/sync/push", PULL_ENVELOPE),  # a pull's type on a push
        ("/v2/sync/pull", PUSH_ENVELOPE),
        ("/v1/sync/push", "text/plain"),
        ("/v1/sync/pull", "application/x-www-form-urlencoded"),
        ("/v1/enroll", "multipart/form-data; boundary=x"),
    ],
)
def test_a_body_in_a_type_the_endpoint_does_not_take_is_refused(office, path, content_type):
    phone = office.enroll("mediator")
    if path == "/v2/sync/push":
        body = phone.push_v2_body([encode_change(phone.change("case", "k-type", {"title": "A"}))])
    elif path == "/v2/sync/pull":
        body = phone.pull_v2_body()
    else:
        body = msgspec.msgpack.encode({"cursor": None, "limit": 5})
    headers = phone.headers(path, body) if path.startswith("/v1/sync") else {}
    headers = {k: v for k, v in headers.items() if k != "content-type"}
    if content_type:
        headers["content-type"] = content_type
    stored = store_digest(office.store.db)

    answer = office.http.post(path, content=body, headers=headers)

    assert answer.status_code == 415
    refusal = msgspec.msgpack.decode(answer.content)
    assert refusal["error"] == "unsupported_media_type"
    assert "send application/" in refusal["detail"]
    assert store_digest(office.store.db) == stored


def test_media_type_parameters_and_case_do_not_matter(office):
    phone = office.enroll("mediator")
    body = phone.pull_v2_body()
    headers = {"content-type": f"{PULL_ENVELOPE.upper()}; charset=binary"}
    assert office.http.post("/v2/sync/pull", content=body, headers=headers).status_code == 200
    body = msgspec.json.encode({"limit": 5})
    headers = {**phone.headers("/v1/sync/pull", body), "content-type": "Application/JSON; q=1"}
    answer = office.http.post("/v1/sync/pull", content=body, headers=headers)
    assert answer.status_code == 200, answer.content
    assert answer.json()["has_more"] is False


SQL_TEXT = st.one_of(
    st.text(alphabet="'\";-%_\\/*()=<>|&!`$ \t\n\r\x00%aZ0é中", max_size=30),
    st.sampled_from(
        [
            "' OR '1'='1",
            "'; DROP TABLE records; --",
            "1; DELETE FROM changes",
            '" OR ""="',
            "%",
            "_",
            "Hangzhou/%",
            "') UNION SELECT name, sql FROM sqlite_master --",
            "x' /*",
            "\x00",
            "9" * 40,
            "-1",
            "²",
        ]
    ),
)
CASE_FILTERS = ["status", "org_unit", "category", "assignee", "overdue", "group"]


@SOME
@given(
    path=st.sampled_from(["/api/cases", "/console/cases", "/console/export/cases.csv"]),
    filters=st.dictionaries(st.sampled_from([*CASE_FILTERS, "offset"]), SQL_TEXT, min_size=1),
)
def test_sql_metacharacters_in_case_filters_find_nothing_and_change_nothing(
    office, supervisor_csrf, path, filters
):
    stored = store_digest(office.store.db, leave_out={"audit"})  # an export is audited
    answer = office.http.get(path, params=filters, follow_redirects=False)
    assert answer.status_code < 500, answer.text
    if path == "/api/cases" and answer.status_code == 200:
        matches_by_value = {k: v for k, v in filters.items() if k in {"status", "category"} and v}
        if matches_by_value:  # compared as values, never as patterns or SQL
            assert answer.json()["total"] == 0
    assert store_digest(office.store.db, leave_out={"audit"}) == stored


@SOME
@given(
    path=st.sampled_from(
        [
            "/api/conflicts",
            "/api/quarantine",
            "/api/warnings",
            "/api/agreements",
            "/api/overdue",
            "/console/conflicts",
            "/console/quarantine",
            "/console/warnings",
            "/console/agreements",
            "/console/overdue",
            "/console/export/conflicts.csv",
            "/console/export/quarantine.csv",
            "/console/export/warnings.csv",
        ]
    ),
    offset=SQL_TEXT,
    everything=SQL_TEXT,
)
def test_sql_metacharacters_in_every_list_query_give_no_5xx(
    office, supervisor_csrf, path, offset, everything
):
    stored = store_digest(office.store.db, leave_out={"audit"})
    answer = office.http.get(
        path, params={"offset": offset, "all": everything}, follow_redirects=False
    )
    assert answer.status_code < 500, answer.text
    if answer.status_code >= 400 and path.startswith("/api/"):
        refused_with_a_code(answer)
    assert store_digest(office.store.db, leave_out={"audit"}) == stored


@pytest.mark.parametrize(
    "name",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "..%2F..%2Fetc%2Fpasswd.csv",
        "%2E%2E%2Flianxin.db.csv",
        "cases.csv%00.db",
        "..%5C..%5Cwindows.csv",
        "%252e%252e%252fcases.csv",
    ],
)
def test_path_traversal_in_a_console_export_finds_no_file(office, supervisor_csrf, name):
    stored = store_digest(office.store.db)
    answer = office.http.get(f"/console/export/{name}", follow_redirects=False)
    assert answer.status_code in {400, 404}, answer.text
    assert b"root:" not in answer.content and b"SQLite format" not in answer.content
    assert store_digest(office.store.db) == stored


@pytest.mark.parametrize(
    "agreement_id", ["..%2F..%2Fetc%2Fpasswd", "%2E%2E%2Flianxin.db", "a%22%0D%0Ax-evil:%201"]
)
def test_path_traversal_in_an_agreement_export_finds_no_file(office, supervisor_csrf, agreement_id):
    stored = store_digest(office.store.db)
    answer = office.http.get(f"/console/agreements/{agreement_id}/export")
    assert answer.status_code in {400, 404}, answer.text
    assert "x-evil" not in answer.headers
    assert store_digest(office.store.db) == stored


def test_the_store_digest_sees_a_change_to_any_table(office):
    # The digest must not pass by construction: one new row anywhere changes it.
    before = store_digest(office.store.db)
    office.directory.add_user("Nobody", "mediator", ["Hangzhou"], office.wall.ms)
    assert store_digest(office.store.db) != before


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/console/deadlines", {"category": "noise", "days": "²", "reason": "r"}),
        ("/console/deadlines", {"category": "noise", "days": "9" * 40, "reason": "r"}),
        (
            "/console/conflicts/settle",
            {"record_type": "case", "record_id": "k-gongshu", "field": "title"}
            | {"choice": "²", "version": "²", "reason": "r", "value": "[" * 5000},
        ),
        ("/console/cases", None),
    ],
)
def test_unicode_digits_and_huge_numbers_in_console_forms_give_no_5xx(
    office, supervisor_csrf, path, fields
):
    # "²".isdigit() holds and int("²") raises: each of these was a 500 once.
    stored = store_digest(office.store.db, leave_out={"audit"})
    if fields is None:
        answer = office.http.get(path, params={"offset": "²"})
    else:
        answer = office.http.post(
            path, data={**fields, "csrf": supervisor_csrf}, follow_redirects=False
        )
    assert answer.status_code < 500, answer.text
    if "9" * 40 not in str(fields):
        assert store_digest(office.store.db, leave_out={"audit"}) == stored
