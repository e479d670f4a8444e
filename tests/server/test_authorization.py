"""Every endpoint with every role: who may write what, and who sees what."""

import msgspec
import pytest

from schemas import Add
from tests.server.test_app import GONGSHU, XIHU, decode, pulled_records

ROLES = ["informant", "mediator", "supervisor", "admin"]
CREATE = {
    "case": {"title": "x", "location": GONGSHU},
    "warning": {"description": "x", "location": GONGSHU},
    "agreement": {"terms": "x"},
    "party": {"name": "x"},
}
# May this role create a record of this type?
MAY_CREATE = {
    "informant": {"warning"},
    "mediator": {"case", "warning", "agreement", "party"},
    "supervisor": {"case", "warning", "agreement", "party"},
    "admin": set(),
}


@pytest.mark.parametrize("role", ROLES)
def test_office_info_is_public_and_enrolment_needs_no_signature(office, role):
    phone = office.enroll(role)  # enrolment itself is role-independent
    assert phone.enrollment.role == role
    assert office.http.get("/v1/office").status_code == 200


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("record_type", list(CREATE))
def test_push_creates_only_what_the_role_may_write(office, role, record_type, version):
    phone = office.enroll(role)
    change = phone.change(record_type, "r-1", CREATE[record_type])
    (result,) = phone.pushed([change], version=version)["results"]
    if record_type in MAY_CREATE[role]:
        assert result["status"] == "applied"
    else:
        assert (result["status"], result["reason"]) == ("rejected", "not_permitted")


@pytest.fixture
def district(office):
    """A Gongshu case assigned to a mediator, linking a warning and a party; a Xihu case."""
    people = {role: office.enroll(role, name=role) for role in ROLES}
    people["outsider"] = office.enroll("mediator", ["Hangzhou/Xihu"], name="outsider")
    people["xihu-supervisor"] = office.enroll("supervisor", ["Hangzhou/Xihu"], name="xs")
    informant, supervisor = people["informant"], people["supervisor"]
    informant.push([informant.change("warning", "w-1", CREATE["warning"])])
    supervisor.push(
        [
            supervisor.change("party", "p-1", {"name": "He"}),
            supervisor.change(
                "case",
                "k-1",
                CREATE["case"],
                [
                    Add(field="mediators", value=people["mediator"].enrollment.user_id),
                    Add(field="warnings", value="w-1"),
                    Add(field="parties", value="p-1"),
                ],
            ),
        ]
    )
    outsider = people["outsider"]
    outsider.push([outsider.change("case", "k-xihu", {"title": "y", "location": XIHU})])
    return people


SEES = {
    "informant": {("warning", "w-1")},
    "mediator": {("case", "k-1"), ("warning", "w-1"), ("party", "p-1")},
    "supervisor": {("case", "k-1"), ("warning", "w-1"), ("party", "p-1")},
    "admin": set(),
    "outsider": {("case", "k-xihu")},
    "xihu-supervisor": {("case", "k-xihu")},
}


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("who", list(SEES))
def test_pull_sends_each_role_exactly_what_it_may_see(district, who, version):
    assert pulled_records(district[who], version) == SEES[who]


@pytest.mark.parametrize("who", list(SEES))
def test_changing_an_existing_record_needs_sight_of_it(district, who):
    phone = district[who]
    results = decode(
        phone.push(
            [
                phone.change("case", "k-1", {"summary": f"by {who}"}),
                phone.change("warning", "w-1", {"response": f"by {who}"}),
            ],
            batch_id=f"b-{who}",
        )
    )["results"]
    for (record_type, _), result in zip([("case", 0), ("warning", 0)], results, strict=True):
        may_write = (record_type, "k-1" if record_type == "case" else "w-1") in SEES[who] and (
            record_type in MAY_CREATE[phone.enrollment.role]
        )
        expected = "applied" if may_write else "rejected"
        assert result["status"] == expected, (who, record_type, result)


@pytest.mark.parametrize("version", [1, 2])
def test_an_informant_never_receives_a_case_even_when_its_warning_is_linked(district, version):
    informant = district["informant"]
    items, _ = informant.pull_all(version)
    record_types = {msgspec.msgpack.decode(i["change"])["record_type"] for i in items}
    assert record_types == {"warning"}


@pytest.mark.parametrize("version", [1, 2])
def test_linking_a_record_out_of_sight_is_refused(district, version):
    outsider = district["outsider"]  # a Xihu mediator who never saw Gongshu's records
    change = outsider.change(
        "case",
        "k-xihu",
        ops=[Add(field="parties", value="p-1"), Add(field="warnings", value="w-1")],
    )
    (result,) = outsider.pushed([change], batch_id="link-1", version=version)["results"]
    assert (result["status"], result["reason"]) == ("rejected", "not_permitted")
    assert pulled_records(outsider) == {("case", "k-xihu")}
