"""Schemathesis over the app's own OpenAPI: every operation, never a 5xx (issue 8, point 5).

Requests go in-process to the app built by `create_app`, with a signed-in
supervisor's session cookie and CSRF header; sync requests are signed by an
enrolled device over the exact bytes sent, so they get past authentication
into the decoders and the engine.
"""

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet

from tests.server.conftest import running_office
from tests.server.test_app import GONGSHU
from tests.server.test_hostile_requests import signed_in_as, store_digest

EXAMPLES = 25  # per operation: about 30 operations in well under a minute


@pytest.fixture(scope="module")
def office(tmp_path_factory):
    with running_office(tmp_path_factory.mktemp("schemathesis")) as office:
        sun = office.enroll("mediator")
        sun.push([sun.change("case", "k-gongshu", {"title": "Drains", "location": GONGSHU})])
        yield office


@pytest.fixture(scope="module")
def schema(office):
    return schemathesis.openapi.from_dict(office.http.get("/schema/openapi.json").json())


def operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_documents_every_write_body(schema):
    posts = [op for op in operations(schema) if op.method.upper() == "POST"]
    assert posts and all(op.body for op in posts), [op.path for op in posts if not op.body]


def test_no_operation_answers_a_server_error(office, schema):
    csrf = signed_in_as(office, "supervisor", office.http)
    phone = office.enroll("mediator")
    tried: dict[str, int] = {}

    for operation in operations(schema):

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case):
            body = b"" if isinstance(case.body, NotSet) else msgspec.json.encode(case.body)
            path = case.formatted_path
            headers = {**{k: str(v) for k, v in (case.headers or {}).items()}}
            headers |= {"content-type": "application/json", "x-csrf-token": csrf}
            if path.startswith("/v1/sync/"):
                headers |= {**phone.headers(path, body), "content-type": "application/json"}
            answer = office.http.request(
                case.method,
                path,
                params=case.query,
                content=body,
                headers=headers,
                follow_redirects=False,
            )
            tried[case.operation.label] = tried.get(case.operation.label, 0) + 1
            case.validate_response(answer, checks=[not_a_server_error])

        run()

    assert len(tried) >= 25 and all(count >= 1 for count in tried.values()), tried


def test_schemathesis_left_the_store_readable(office):
    # Runs after the fuzzing in this module: the store still opens and hashes.
    assert store_digest(office.store.db)
