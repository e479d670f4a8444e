"""Every endpoint with every role: who may write what, and who sees what."""

import msgspec
import pytest

from schemas import Add, Location
from server import audit
from server.console import signin
from server.service import SyncService
from server.storage.access import update_access
from sync.access import org_unit
from sync.changes import decode_change
from sync.clock import Clock
from sync.engine import apply_batch
from tests.conftest import migrate_again
from tests.server.test_app import GONGSHU, XIHU, decode, error_of, pulled_records
from tests.server.test_console import PASSWORD, sign_in

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


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("who", list(SEES))
def test_a_pull_from_states_sends_each_role_exactly_what_it_may_see(district, who, version):
    phone, cursor, held = district[who], "states", set()
    while True:
        page = phone.pulled(cursor, version)
        states = [msgspec.msgpack.decode(i["state"]) for i in page["items"]]
        held |= {(s["record_type"], s["record_id"]) for s in states}
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert held == SEES[who]


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


@pytest.mark.parametrize("role", ROLES)
def test_a_record_type_no_office_knows_is_answered_as_such_for_every_role(office, role):
    phone = office.enroll(role)
    (result,) = phone.pushed([phone.change("boat", "b-1", {"title": "x"})])["results"]
    assert (result["status"], result["reason"]) == ("rejected", "unknown_record_type")
    assert quarantined(office, result["change_id"]) == "unknown_record_type"


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


def quarantined(office, change_id):
    """The reason `change_id` is held in quarantine for, or None."""
    row = office.store.db.execute(
        "SELECT reason FROM quarantine WHERE change_id = ?", [change_id]
    ).fetchone()
    return row[0] if row else None


def records_held(phone):
    """The records a pull from the start sends `phone`, whichever form each change was pushed in."""
    items, _ = phone.pull_all()
    changes = [decode_change(i["change"]) for i in items if i["type"] == "change"]
    return {(c.record_type, c.record_id) for c in changes}


def a_case_naming(phone, user_id):
    """A new Gongshu case that links a new party and names `user_id` in `mediators`."""
    return [
        phone.change("party", "p-1", {"name": "He Jianguo", "phone": "+86 138 0000 1234"}),
        phone.change(
            "case",
            "k-1",
            CREATE["case"],
            [Add(field="parties", value="p-1"), Add(field="mediators", value=user_id)],
        ),
    ]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("named", ["informant", "admin", "supervisor", "mediator who left"])
def test_only_a_mediator_may_be_named_in_a_cases_mediators(office, named, version):
    # Review finding: a mediator named an informant in `mediators`, and the
    # informant's next pull carried the case and its party's name and phone.
    other = office.enroll(named.split()[0], ["Hangzhou/Xihu"], name=named)
    user_id = other.enrollment.user_id
    if named == "mediator who left":
        office.directory.disable(user_id, office.wall.ms)
    mediator = office.enroll("mediator", name="med")
    party, case = a_case_naming(mediator, user_id)
    results = mediator.pushed([party, case], version=version)["results"]
    assert [r["status"] for r in results] == ["applied", "rejected"]
    assert results[1]["reason"] == "not_permitted"
    assert results[1]["detail"] == (
        f"only mediators at the office are assigned to cases: {user_id} is not a mediator, or left"
    )
    assert quarantined(office, case.change_id) == "not_permitted"
    held = office.store.db.execute("SELECT count(*) FROM access WHERE user_id = ?", [user_id])
    assert held.fetchone() == (0,)
    assert records_held(mediator) == {("party", "p-1")}


def test_naming_a_user_the_office_does_not_know_in_mediators_is_refused(office):
    mediator = office.enroll("mediator")
    party, case = a_case_naming(mediator, "u-nobody")
    results = mediator.pushed([party, case])["results"]
    assert (results[1]["status"], results[1]["reason"]) == ("rejected", "not_permitted")


def test_a_mediator_may_name_another_mediator_of_the_office(office):
    mediator = office.enroll("mediator", name="med")
    colleague = office.enroll("mediator", ["Hangzhou/Xihu"], name="colleague")
    results = mediator.pushed(a_case_naming(mediator, colleague.enrollment.user_id))["results"]
    assert [r["status"] for r in results] == ["applied", "applied"]
    assert pulled_records(colleague) == {("case", "k-1"), ("party", "p-1")}


@pytest.mark.parametrize("named", ["informant", "admin"])
def test_an_informant_or_admin_named_before_the_rule_still_reads_no_case(office, named):
    """A case stored before such pushes were refused keeps its `mediators`: the readers
    computed from it still leave out whoever there is not a mediator."""
    other = office.enroll(named, name=named)
    mediator = office.enroll("mediator", name="med")
    changes = a_case_naming(mediator, other.enrollment.user_id)
    # Written as the server did before the fix: merged with no authorization.
    with office.store.transaction():
        results = apply_batch(office.store, changes, Clock(office.wall))
        touched = {
            (c.record_type, c.record_id): r.seq for c, r in zip(changes, results, strict=True)
        }
        update_access(office.store, touched, mediator.enrollment.user_id)
    assert [r.status for r in results] == ["applied", "applied"]
    assert pulled_records(other) == set()
    assert pulled_records(mediator) == {("case", "k-1"), ("party", "p-1")}


def test_a_location_cannot_spell_another_districts_path(office):
    # Xihu's supervisor sees what lies under Hangzhou/Xihu. A "/" inside a step, or an
    # empty district before a street named Xihu, spelled that path from elsewhere.
    xihu = office.enroll("supervisor", ["Hangzhou/Xihu"])
    mediator = office.enroll("mediator")
    slash = {"city": "Hangzhou/Xihu", "district": "Lingyin", "street": "Fayun"}
    gap = {"city": "Hangzhou", "district": "", "street": "Xihu"}
    answer = decode(
        mediator.push(
            [
                mediator.change("case", "k-slash", {"title": "Noise", "location": slash}),
                mediator.change("case", "k-gap", {"title": "Noise", "location": gap}),
            ]
        )
    )
    assert [(r["status"], r.get("reason")) for r in answer["results"]] == [
        ("rejected", "invalid_value"),
        ("rejected", "invalid_value"),
    ]
    assert pulled_records(xihu) == set()
    # Refused as sent, not as stored: a state holding such a location still reads.
    assert org_unit(Location(**slash)) == "Hangzhou/Xihu/Lingyin/Fayun"


def test_an_upgraded_office_takes_back_what_a_non_mediator_named_in_mediators_read(office):
    # Before only mediators could be named in `mediators`, naming an informant there let
    # the informant read the case and its party. The rule alone left that access in
    # place until the case changed again; the upgrade works such cases' readers out anew.
    informant = office.enroll("informant", name="informant")
    mediator = office.enroll("mediator", name="med")
    informant_id = informant.enrollment.user_id
    mediator.push(a_case_naming(mediator, mediator.enrollment.user_id))
    service = office.http.app.state.service
    supervisor = office.directory.add_user("sup", "supervisor", ["Hangzhou"], office.wall.ms)
    naming = mediator.change("case", "k-1", ops=[Add(field="mediators", value=informant_id)])
    assert [r.status for r in service.act(supervisor, [naming])] == ["applied"]
    with office.store.transaction():  # what the older office granted for that name
        office.store.db.conn.executemany(
            "INSERT INTO access (user_id, record_type, record_id, since_seq) VALUES (?, ?, ?, 1)",
            [(informant_id, "case", "k-1"), (informant_id, "party", "p-1")],
        )
    _, cursor = informant.pull_all()
    assert records_held(informant) == {("case", "k-1"), ("party", "p-1")}

    office.store.db.execute("DROP TABLE due")
    assert migrate_again(office.store.db, "0014") == [
        "0014_due",
        "0015_phone_digests",
        "0016_merge_states",
        "0017_stale_case_readers",
        "0018_index_rows",
        "0019_audit_actions",
    ]
    SyncService(service.settings, office.store, office.keys, service.clock, office.wall)

    assert records_held(informant) == set()
    assert records_held(mediator) == {("case", "k-1"), ("party", "p-1")}
    mediator.push([mediator.change("case", "k-1", {"priority": "high"})], batch_id="b-2")
    page = informant.pulled(cursor)
    evicted = {(i["record_type"], i["record_id"]) for i in page["items"] if i["type"] == "evict"}
    assert evicted == {("case", "k-1"), ("party", "p-1")}
    done = [e.detail for e in audit.entries(office.store.db) if e.action == "catch_up"]
    # Both records merged again (0016), then the party's phone indexed again too.
    assert done == [{"states": 2}, {"people": 1, "readers": 1}]
    # Done once: the next start finds nothing due.
    assert office.store.db.execute("SELECT count(*) FROM due").fetchone() == (0,)


def test_a_mediator_made_supervisor_enrols_again_and_reads_the_district_not_their_cases(office):
    sun = office.enroll("mediator", name="Sun")
    sun_id = sun.enrollment.user_id
    wang = office.enroll("mediator", name="Wang")
    sun.push([*a_case_naming(sun, sun_id)])  # k-1 in Gongshu, naming Sun, linking p-1
    far = {"title": "Far", "location": XIHU}
    wang.push([wang.change("case", "k-far", far, [Add(field="mediators", value=sun_id)])])
    wang.push([wang.change("case", "k-2", {"title": "Noise", "location": GONGSHU})], "b-2")
    unused = office.directory.issue_code(sun_id, office.wall.ms, 3600_000)
    assert records_held(sun) == {("case", "k-1"), ("party", "p-1"), ("case", "k-far")}

    changed = office.directory.change_role(sun_id, "supervisor", office.wall.ms)
    assert changed == ("mediator", [sun.device_id])
    assert error_of(sun.pull()) == (403, "revoked_device")  # it enrolled as a mediator
    with pytest.raises(AssertionError):
        office.enroll_with(unused)  # issued for the old role
    code = office.directory.issue_code(sun_id, office.wall.ms, 3600_000)
    again = office.enroll_with(code)
    assert again.enrollment.role == "supervisor"
    # What they may now read is served from the office's next logged change, as after a move.
    wang.push([wang.change("case", "k-3", {"title": "Lift", "location": XIHU})], "b-3")
    # Gongshu's every record, as a supervisor of it; the Xihu case naming them no longer.
    assert records_held(again) == {("case", "k-1"), ("party", "p-1"), ("case", "k-2")}
    # Back to mediator: the district goes, the cases naming them come back.
    assert office.directory.change_role(sun_id, "mediator", office.wall.ms) == (
        "supervisor",
        [again.device_id],
    )
    wang.push([wang.change("case", "k-4", {"title": "Lift", "location": XIHU})], "b-4")
    code = office.directory.issue_code(sun_id, office.wall.ms, 3600_000)
    assert records_held(office.enroll_with(code)) == {
        ("case", "k-1"),
        ("party", "p-1"),
        ("case", "k-far"),
    }
    with pytest.raises(ValueError, match="already"):
        office.directory.change_role(sun_id, "mediator", office.wall.ms)
    assert office.directory.change_role("u-nobody", "admin", office.wall.ms) is None


def test_a_supervisor_moved_to_another_district_sees_it_and_no_longer_the_old_one(office):
    mediator = office.enroll("mediator")
    mediator.push(
        [
            *a_case_naming(mediator, mediator.enrollment.user_id),
            mediator.change("case", "k-2", {"title": "Noise", "location": XIHU}),
        ]
    )
    chen = office.enroll("supervisor", org_units=["Hangzhou/Gongshu"])
    _, cursor = chen.pull_all()
    assert records_held(chen) == {("case", "k-1"), ("party", "p-1")}

    user_id = chen.enrollment.user_id
    assert office.directory.move(user_id, ["Hangzhou/Xihu"]) == ["Hangzhou/Gongshu"]
    moved = office.directory.user(user_id)
    assert moved.org_units == ["Hangzhou/Xihu"]
    signin.set_password(office.directory, user_id, PASSWORD)
    assert sign_in(office, moved).status_code == 303
    assert [c["case_id"] for c in office.http.get("/api/cases").json()["cases"]] == ["k-2"]
    # The phone drops the old district's records, and gets the new one's, with the
    # office's next logged change, as after any change of who may read what.
    mediator.push([mediator.change("case", "k-3", {"title": "Lift", "location": XIHU})], "b-2")
    page = chen.pulled(cursor)
    evicted = {(i["record_type"], i["record_id"]) for i in page["items"] if i["type"] == "evict"}
    assert evicted == {("case", "k-1"), ("party", "p-1")}
    assert records_held(chen) == {("case", "k-2"), ("case", "k-3")}
    # A mediator's units say which cases they may be assigned: what they see stays.
    assert office.directory.move(mediator.enrollment.user_id, ["Hangzhou/Xihu"]) == [
        "Hangzhou/Gongshu"
    ]
    assert ("case", "k-1") in records_held(mediator)
    assert office.directory.move("u-nobody", ["Hangzhou"]) is None
