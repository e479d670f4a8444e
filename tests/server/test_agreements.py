"""Agreements through the real app: each refusal has its own code, and execution is exact."""

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from schemas import Add, Agreement, Append, Delete, Signature
from server import agreements as office_agreements
from server import audit
from server.app import create_app
from server.settings import Settings
from server.storage.directory import Directory
from sync import agreements
from sync.clock import Clock, pack
from sync.merge import is_deleted, materialize
from tests.conftest import Wall, make_store, office_keys
from tests.server.conftest import Office, running_office
from tests.server.test_app import GONGSHU, decode

SIGNERS = ["p-1", "p-2", "p-3"]
TERMS = {"terms": "A grease trap within 14 days.", "required_signers": SIGNERS, "case": "k-1"}


def open_agreement(office, mediators=1):
    """A draft agreement on a Gongshu case, and the mediator phones assigned to it."""
    supervisor = office.enroll("supervisor")
    phones = [office.enroll("mediator", name=f"m{n}") for n in range(mediators)]
    supervisor.push(
        [
            supervisor.change(
                "case",
                "k-1",
                {"title": "Grease", "location": GONGSHU},
                [
                    *(Add(field="mediators", value=p.enrollment.user_id) for p in phones),
                    Add(field="agreements", value="a-1"),
                ],
            ),
            supervisor.change("agreement", "a-1", {**TERMS, "status": "draft"}),
        ]
    )
    return phones


def stored_agreement(office):
    return materialize(office.store.states([("agreement", "a-1")])[("agreement", "a-1")])


def attested(phone, signer, content=None, agreement_id="a-1"):
    """A handwritten signature captured on `phone`, as its key attests it."""
    draft = Agreement(case="k-1", terms=TERMS["terms"], required_signers=SIGNERS)
    content = content or agreements.content_hash("a-1", draft)
    unsigned = Signature(
        signer=signer,
        signed_at=agreements.moment(phone.wall.ms),
        content_hash=content,
        signature=b"",
        witness=phone.enrollment.user_id,
        handwriting_hash="ab" * 32,
        device_id=phone.device_id,
    )
    message = agreements.signature_message(agreement_id, unsigned)
    signed = msgspec.structs.replace(unsigned, signature=phone.key.sign(message))
    return msgspec.to_builtins(signed)


def sign(phone, *entries, batch_id, seen=None):
    ops = [Append(field="signatures", entry=e) for e in entries]
    change = phone.change("agreement", "a-1", ops=ops, seen=seen)
    return decode(phone.push([change], batch_id=batch_id))


def test_the_last_required_signature_executes_with_an_office_receipt(office):
    (mediator,) = open_agreement(office)
    sign(mediator, attested(mediator, "p-1"), attested(mediator, "p-2"), batch_id="s-1")
    assert stored_agreement(office).status == "collecting"
    sign(mediator, attested(mediator, "p-3"), batch_id="s-2")
    agreement = stored_agreement(office)
    assert agreement.status == "executed"
    receipt = agreement.receipt
    message = agreements.receipt_message("a-1", receipt)
    agreements.signing.verify(office.keys.signing_public, receipt.signature, message, "receipt")
    (last_by_office,) = office.store.db.execute(
        "SELECT max(seq) FROM changes WHERE device_id = ?", [office.keys.office_id]
    ).fetchone()
    assert receipt.seq == last_by_office


def kept(office):
    """What a refused change must not touch: records, the change log, who sees what."""
    return [
        office.store.db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
        for t in ("records", "changes", "access")
    ]


def refused(office, phone, entry, batch_id):
    before = kept(office)
    # Made, as on a phone, over the agreement as pulled: all of it seen.
    (result,) = sign(phone, entry, batch_id=batch_id, seen=current_vv(office))["results"]
    assert result["status"] == "rejected"
    assert kept(office) == before
    quarantined = {row.change_id: row.reason for row in office.store.quarantined()}
    assert quarantined[result["change_id"]] == result["reason"]
    return result["reason"]


def test_each_bad_signature_is_refused_with_its_own_code(office):
    (mediator,) = open_agreement(office)
    forged = {**attested(mediator, "p-1"), "signature": bytes(64)}
    assert refused(office, mediator, forged, "b-1") == "signature_invalid"
    other = attested(mediator, "p-1", content="cd" * 32)
    assert refused(office, mediator, other, "b-2") == "signature_content_mismatch"
    stranger = attested(mediator, "p-9")
    assert refused(office, mediator, stranger, "b-3") == "signer_not_required"


def test_a_signature_from_a_device_revoked_before_it_arrived_is_refused(office):
    (mediator,) = open_agreement(office)
    entry = attested(mediator, "p-1")
    other = office.enroll("mediator", name="Li")
    office.directory.revoke(mediator.device_id, office.wall.ms)
    # Relayed by another phone: the signature's own device is what counts.
    reason = refused(office, other, {**entry}, "b-1")
    assert reason in {"signature_invalid", "not_permitted"}


def test_a_signature_stays_valid_when_its_device_is_revoked_later(office):
    (mediator,) = open_agreement(office)
    sign(mediator, attested(mediator, "p-1"), batch_id="s-1")
    office.directory.revoke(mediator.device_id, office.wall.ms)
    late = office.enroll("mediator", name="Li")
    supervisor_view = stored_agreement(office)
    assert [s.signer for s in supervisor_view.signatures] == ["p-1"]
    del late


def test_sealed_terms_refuse_an_edit_from_a_device_that_saw_a_signature(office):
    (mediator,) = open_agreement(office)
    sign(mediator, attested(mediator, "p-1"), batch_id="s-1")
    state = office.store.states([("agreement", "a-1")])[("agreement", "a-1")]
    edit = mediator.change("agreement", "a-1", {"terms": "No trap after all."}, seen=state.vv)
    before = kept(office)
    (result,) = decode(mediator.push([edit], batch_id="e-1"))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "agreement_sealed")
    assert kept(office) == before
    assert stored_agreement(office).terms == TERMS["terms"]


SIGNATURE_ORDERS = st.permutations(SIGNERS).flatmap(
    lambda order: st.tuples(st.just(order), st.lists(st.sampled_from(order), max_size=3))
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=SIGNATURE_ORDERS)
def test_any_delivery_order_with_duplicates_executes_once(tmp_path_factory, plan):
    order, again = plan
    with running_office(tmp_path_factory.mktemp("office")) as office:
        sun, li = open_agreement(office, mediators=2)
        captured = {signer: attested(sun, signer) for signer in SIGNERS}
        # Each signature delivered by either phone, some twice, in any order.
        for n, signer in enumerate([*order, *again]):
            sign([sun, li][n % 2], captured[signer], batch_id=f"s-{n}")
        agreement = stored_agreement(office)
        executions = [
            logged
            for logged in office.store.changes_since(0, 10_000)
            if logged.change.device_id == office.keys.office_id
            and logged.change.set.get("status") == "executed"
        ]
    assert agreement.status == "executed"
    assert sorted(s.signer for s in agreement.signatures) == SIGNERS
    assert len(executions) == 1


def withdrawal(phone, signer):
    moment = agreements.moment(phone.wall.ms).isoformat()
    entry = {"signer": signer, "withdrawn_at": moment, "reason": "changed their mind"}
    return Append(field="withdrawals", entry={**entry, "witness": phone.enrollment.user_id})


def test_a_withdrawal_before_execution_stops_it_and_is_refused_after(office):
    sun, li = open_agreement(office, mediators=2)
    sign(sun, attested(sun, "p-1"), attested(sun, "p-2"), batch_id="s-1")
    (result,) = decode(
        sun.push([sun.change("agreement", "a-1", ops=[withdrawal(sun, "p-2")])], batch_id="w-1")
    )["results"]
    assert result["status"] == "applied"
    sign(li, attested(li, "p-3"), batch_id="s-2")
    agreement = stored_agreement(office)
    assert agreement.status == "collecting"  # p-2 withdrew: not every signer stands
    assert [w.signer for w in agreement.withdrawals] == ["p-2"]
    assert "p-2" in {s.signer for s in agreement.signatures}  # recorded, not erased


def test_a_withdrawal_after_execution_is_refused(office):
    (sun,) = open_agreement(office)
    sign(sun, *(attested(sun, s) for s in SIGNERS), batch_id="s-1")
    assert stored_agreement(office).status == "executed"
    before = kept(office)
    late = sun.change("agreement", "a-1", ops=[withdrawal(sun, "p-1")])
    (result,) = decode(sun.push([late], batch_id="w-1"))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "withdrawal_after_execution")
    assert kept(office) == before


def test_executing_a_new_version_supersedes_the_old_one(office):
    (sun,) = open_agreement(office)
    sign(sun, *(attested(sun, s) for s in SIGNERS), batch_id="s-1")
    assert stored_agreement(office).status == "executed"
    supervisor = office.enroll("supervisor", name="Chen")
    v2 = {**TERMS, "terms": "A grease trap within 30 days.", "version": 2, "supersedes": "a-1"}
    supervisor.push(
        [
            supervisor.change("agreement", "a-2", {**v2, "status": "draft"}),
            supervisor.change("case", "k-1", ops=[Add(field="agreements", value="a-2")]),
        ]
    )
    content = agreements.content_hash("a-2", Agreement(**{k: v for k, v in v2.items()}))
    entries = [attested(sun, s, content=content, agreement_id="a-2") for s in SIGNERS]
    ops = [Append(field="signatures", entry=e) for e in entries]
    decode(sun.push([sun.change("agreement", "a-2", ops=ops)], batch_id="s-2"))
    new = materialize(office.store.states([("agreement", "a-2")])[("agreement", "a-2")])
    assert new.status == "executed"
    assert stored_agreement(office).status == "superseded"


def test_naming_an_agreement_out_of_sight_in_supersedes_is_refused(office):
    # Review finding: a Xihu mediator who never saw Gongshu's executed `a-1` made
    # `a-x` superseding it, signed by a signer of its own, and `a-x`'s execution
    # moved `a-1` to `superseded`.
    (sun,) = open_agreement(office)
    sign(sun, *(attested(sun, s) for s in SIGNERS), batch_id="s-1")
    outsider = office.enroll("mediator", ["Hangzhou/Xihu"], name="outsider")
    fields = {"terms": "Nothing.", "required_signers": ["p-own"], "supersedes": "a-1", "version": 2}
    content = agreements.content_hash("a-x", Agreement(**fields))
    entry = attested(outsider, "p-own", content=content, agreement_id="a-x")
    change = outsider.change(
        "agreement",
        "a-x",
        {**fields, "status": "draft"},
        [Append(field="signatures", entry=entry)],
    )
    (result,) = decode(outsider.push([change], batch_id="x-1"))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "not_permitted")
    assert result["detail"] == f"{outsider.enrollment.user_id} may not supersede agreement a-1"
    assert stored_agreement(office).status == "executed"
    assert office.store.states([("agreement", "a-x")]) == {}


def test_a_signature_over_terms_changed_since_does_not_count(office):
    sun, li = open_agreement(office, mediators=2)
    draft = office.store.states([("agreement", "a-1")])[("agreement", "a-1")]
    sign(sun, attested(sun, "p-1"), batch_id="s-1")
    # Li had not seen that signature: the terms change is concurrent, so it applies.
    edit = li.change("agreement", "a-1", {"terms": "A grease trap within 7 days."}, seen=draft.vv)
    assert decode(li.push([edit], batch_id="e-1"))["results"][0]["status"] == "applied"
    new_terms = Agreement(
        case="k-1", terms="A grease trap within 7 days.", required_signers=SIGNERS
    )
    content = agreements.content_hash("a-1", new_terms)
    sign(
        li,
        attested(li, "p-2", content=content),
        attested(li, "p-3", content=content),
        batch_id="s-2",
    )
    # p-1 signed other terms: nothing is executed until p-1 signs these.
    assert stored_agreement(office).status == "collecting"
    # Signing again does not replace p-1's first signature (the earliest shows): this
    # version can no longer execute, and a new version that supersedes it is the way on.
    sign(li, attested(li, "p-1", content=content), batch_id="s-3")
    assert stored_agreement(office).status == "collecting"


@pytest.mark.parametrize("terms_first", [True, False])
def test_a_signature_and_a_terms_edit_made_apart_keep_the_signature_either_way(office, terms_first):
    # Sun captures p-1's signature over the draft; Li, who had not seen it, edits the terms.
    # Refused when the edit arrived first, kept when it arrived second: now kept both ways.
    sun, li = open_agreement(office, mediators=2)
    draft = dict(current_vv(office))
    entry = attested(sun, "p-1")
    signed = sun.change(
        "agreement", "a-1", ops=[Append(field="signatures", entry=entry)], seen=draft
    )
    # A form that saves every field it shows: no write of the draft's content is left.
    fields = {**TERMS, "terms": "A grease trap within 7 days."}
    edit = li.change("agreement", "a-1", fields, seen=draft)
    pushes = [(li, edit, "t-1"), (sun, signed, "s-1")]
    for phone, change, batch_id in pushes if terms_first else pushes[::-1]:
        (result,) = decode(phone.push([change], batch_id=batch_id))["results"]
        assert result["status"] == "applied"
    agreement = stored_agreement(office)
    assert agreement.terms == "A grease trap within 7 days."
    assert agreement.signatures == [msgspec.convert(entry, Signature)]  # over the draft's terms
    assert agreement.status == "collecting" and not agreements.is_complete("a-1", agreement)


@pytest.mark.parametrize("edit_first", [True, False])
def test_a_signer_removed_by_an_edit_made_apart_keeps_their_acts_either_way(office, edit_first):
    # Li, offline, drops p-1 from the signers; meanwhile Sun captures p-1's signature (over
    # the draft) and, later, their withdrawal. Both were refused `signer_not_required` when
    # the edit arrived first, and kept (not counting) when it arrived second.
    sun, li = open_agreement(office, mediators=2)
    draft = dict(current_vv(office))
    edit = li.change("agreement", "a-1", {"required_signers": ["p-2", "p-3"]}, seen=draft)
    entry = attested(sun, "p-1")
    signed = sun.change(
        "agreement", "a-1", ops=[Append(field="signatures", entry=entry)], seen=draft
    )
    withdrawn = sun.change("agreement", "a-1", ops=[withdrawal(sun, "p-1")], seen=draft)
    pushes = [(li, edit, "e-1"), (sun, signed, "s-1"), (sun, withdrawn, "w-1")]
    for phone, change, batch_id in pushes if edit_first else [*pushes[1:], pushes[0]]:
        (result,) = decode(phone.push([change], batch_id=batch_id))["results"]
        assert result["status"] == "applied", (batch_id, result)
    agreement = stored_agreement(office)
    assert agreement.required_signers == ["p-2", "p-3"]
    assert agreement.signatures == [msgspec.convert(entry, Signature)]
    assert [w.signer for w in agreement.withdrawals] == ["p-1"]
    # Neither counts, nor stops the signers the agreement now requires.
    content = agreements.content_hash("a-1", agreement)
    sign(li, *(attested(li, p, content=content) for p in ("p-2", "p-3")), batch_id="s-2")
    assert stored_agreement(office).status == "executed"


def test_a_signature_whose_change_saw_nothing_of_the_agreement_is_held_to_its_terms(office):
    # Kept-not-counting is for a signature made before an edit its phone had not seen. One
    # claiming to have seen nothing at all (`seen` empty) would otherwise be kept over any
    # hash, and, stamped earliest, show in place of the signer's real one.
    sun, li = open_agreement(office, mediators=2)
    edit = li.change("agreement", "a-1", {"terms": "Within 7 days."}, seen=dict(current_vv(office)))
    assert decode(li.push([edit], batch_id="t-1"))["results"][0]["status"] == "applied"
    bogus = attested(sun, "p-1", content="cd" * 32)
    assert refused(office, sun, bogus, "x-1") == "signature_content_mismatch"
    (result,) = sign(sun, bogus, batch_id="x-2")["results"]  # seen={}
    assert (result["status"], result["reason"]) == ("rejected", "signature_content_mismatch")


def current_vv(office):
    return office.store.states([("agreement", "a-1")])[("agreement", "a-1")].vv


def test_only_the_office_executes_countersigns_or_supersedes(office):
    (sun,) = open_agreement(office)
    sign(sun, attested(sun, "p-1"), batch_id="s-1")
    # Moves the state machine allows from what the device saw, kept for the office alone.
    for n, fields in enumerate([{"status": "executed"}, {"receipt": None}]):
        change = sun.change("agreement", "a-1", fields, seen=current_vv(office))
        (result,) = decode(sun.push([change], batch_id=f"x-{n}"))["results"]
        assert (result["status"], result["reason"]) == ("rejected", "not_permitted"), fields
    assert stored_agreement(office).status == "collecting"


def test_an_executed_agreement_cannot_be_voided_by_a_device(office):
    sun, li = open_agreement(office, mediators=2)
    sign(sun, attested(sun, "p-1"), batch_id="s-1")
    before_execution = current_vv(office)
    sign(sun, attested(sun, "p-2"), attested(sun, "p-3"), batch_id="s-2")
    # Li voids from a view taken before execution: legal for the machine, not for the office.
    late = li.change("agreement", "a-1", {"status": "void"}, seen=before_execution)
    (result,) = decode(li.push([late], batch_id="v-1"))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "not_permitted")
    assert stored_agreement(office).status == "executed"


def test_only_the_signer_or_their_witness_may_withdraw(office):
    sun, li = open_agreement(office, mediators=2)
    sign(sun, attested(sun, "p-1"), batch_id="s-1")
    (result,) = decode(
        li.push([li.change("agreement", "a-1", ops=[withdrawal(li, "p-1")])], batch_id="w-1")
    )["results"]
    assert (result["status"], result["reason"]) == ("rejected", "not_permitted")
    assert stored_agreement(office).withdrawals == []


def test_a_signature_without_a_time_zone_is_refused_not_a_crash(office):
    (sun,) = open_agreement(office)
    naive = {**attested(sun, "p-1"), "signed_at": "2026-01-01T00:00:00"}
    (result,) = sign(sun, naive, batch_id="n-1")["results"]
    assert (result["status"], result["reason"]) == ("rejected", "invalid_value")


def test_an_edit_made_beside_the_signatures_cannot_change_an_executed_agreement(office):
    # Li edits the terms offline while Sun collects the signatures on the draft: the
    # signatures arrive first and execute it; the office's receipt vouches for that text.
    sun, li = open_agreement(office, mediators=2)
    draft = office.store.states([("agreement", "a-1")])[("agreement", "a-1")]
    sign(sun, *(attested(sun, s) for s in SIGNERS), batch_id="s-1")
    executed = stored_agreement(office)
    assert executed.status == "executed"

    edit = li.change("agreement", "a-1", {"terms": "A grease trap within 7 days."}, seen=draft.vv)
    (result,) = decode(li.push([edit], batch_id="e-1"))["results"]

    assert (result["status"], result["reason"]) == ("rejected", "agreement_sealed")
    assert stored_agreement(office) == executed
    office_key = (office.keys.office_id, office.keys.signing_public)
    assert agreements.receipt_problems("a-1", executed, *office_key) == []


def test_a_signature_captured_earlier_but_arriving_after_execution_is_refused(office):
    # Li captured p-1's handwriting offline before Sun's phone collected every signature;
    # Li's older stamp would have put that signature in the place of the counted one.
    sun, li = open_agreement(office, mediators=2)
    captured = li.change(
        "agreement", "a-1", ops=[Append(field="signatures", entry=attested(li, "p-1"))]
    )
    sign(sun, *(attested(sun, s) for s in SIGNERS), batch_id="s-1")
    executed = stored_agreement(office)
    (result,) = decode(li.push([captured], batch_id="late-1"))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "agreement_sealed")
    assert stored_agreement(office) == executed
    office_key = (office.keys.office_id, office.keys.signing_public)
    assert agreements.receipt_problems("a-1", executed, *office_key) == []


def test_an_executed_agreement_cannot_be_deleted(office):
    sun, li = open_agreement(office, mediators=2)
    sign(sun, *(attested(sun, s) for s in SIGNERS), batch_id="s-1")
    executed = office.store.states([("agreement", "a-1")])[("agreement", "a-1")]
    delete = li.change("agreement", "a-1", ops=[Delete()], seen=executed.vv)
    (result,) = decode(li.push([delete], batch_id="d-1"))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "not_permitted")
    assert not is_deleted(office.store.states([("agreement", "a-1")])[("agreement", "a-1")])


def test_new_terms_replace_an_executed_agreement_only_with_all_its_signers(office):
    sun, li = open_agreement(office, mediators=2)
    sign(sun, *(attested(sun, s) for s in SIGNERS), batch_id="s-1")
    # Li alone, as the one signer of "new terms", would undo what three parties signed.
    alone = {**TERMS, "terms": "Nothing is owed.", "required_signers": ["p-1"], "supersedes": "a-1"}
    (result,) = decode(li.push([li.change("agreement", "a-2", alone)], batch_id="n-1"))["results"]
    assert (result["status"], result["reason"]) == ("rejected", "not_permitted")
    assert "p-2, p-3 missing" in result["detail"]
    everyone = {**alone, "required_signers": [*SIGNERS, "p-4"]}
    (result,) = decode(li.push([li.change("agreement", "a-2", everyone)], batch_id="n-2"))[
        "results"
    ]
    assert result["status"] == "applied"
    assert stored_agreement(office).status == "executed"


def two_versions_completed_in_one_batch(office, v2_signers, new_first):
    """A-1 one signature short; a-2 naming it in `supersedes`, one signature short too;
    then one batch with both last signatures, in the order asked."""
    (sun,) = open_agreement(office)
    sign(sun, attested(sun, "p-1"), attested(sun, "p-2"), batch_id="s-1")
    v2 = {**TERMS, "terms": "Nothing is owed.", "required_signers": v2_signers}
    v2 |= {"version": 2, "supersedes": "a-1"}
    supervisor = office.enroll("supervisor", name="Chen")
    supervisor.push(
        [
            supervisor.change("agreement", "a-2", {**v2, "status": "draft"}),
            supervisor.change("case", "k-1", ops=[Add(field="agreements", value="a-2")]),
        ]
    )
    content = agreements.content_hash("a-2", Agreement(**v2))
    new = [attested(sun, s, content=content, agreement_id="a-2") for s in v2_signers]
    last = [attested(sun, "p-3")]
    batch = [
        sun.change("agreement", i, ops=[Append(field="signatures", entry=e) for e in entries])
        for i, entries in (("a-2", new), ("a-1", last))
    ]
    answer = sun.push(batch if new_first else batch[::-1], batch_id="s-2")
    assert answer.status_code == 200, answer.content
    old, new_state = (office.store.states([("agreement", i)]) for i in ("a-1", "a-2"))
    return materialize(old[("agreement", "a-1")]), materialize(new_state[("agreement", "a-2")])


def test_a_batch_completing_both_versions_cannot_slip_new_terms_past_the_signers(office):
    old, new = two_versions_completed_in_one_batch(office, ["p-1"], new_first=False)
    # A-1 executed first in the batch; a-2 lacks p-2 and p-3, so it does not execute.
    assert (old.status, new.status) == ("executed", "collecting")
    actions = [(e.action, e.subject) for e in audit.entries(office.store.db)]
    assert ("agreement_not_executed", "agreement/a-2") in actions


def test_a_batch_completing_the_new_version_first_voids_the_old_one_and_answers(office):
    # The new version executes first and voids the old one, still collecting; the old
    # one's last signature in the same batch then finds it void (this answered 500).
    old, new = two_versions_completed_in_one_batch(office, SIGNERS, new_first=True)
    assert (old.status, new.status) == ("void", "executed")


@pytest.mark.parametrize("hours_fast", [5, 7 * 24])
def test_the_office_stamps_its_changes_after_its_last_one_when_restarted(tmp_path, hours_fast):
    # A phone five hours fast (within the drift bound) or a week fast (clamped) signs
    # first; the office stamps its "collecting" move from that, in the same push. Restarted
    # with a right clock, its next move must still rank after it, or the push that
    # executes the agreement fails (a 500, on every retry).
    keys, wall, hour = office_keys(), Wall(), 3_600_000
    store = make_store(tmp_path / "lianxin.db", keys)
    settings = Settings(data_dir=tmp_path, require_sealed=False, secure_cookies=False)

    def serving():
        app = create_app(settings, store=store, keys=keys, clock=Clock(wall), wall_ms=wall)
        return TestClient(app)

    with serving() as http:
        office = Office(store, Directory(store), keys, http, wall)
        sun, li = open_agreement(office, mediators=2)
        first = Append(field="signatures", entry=attested(sun, "p-1"))
        changes = [
            sun.change("case", "k-1", {"priority": "high"}),
            sun.change("agreement", "a-1", ops=[first]),
        ]
        fast = [
            msgspec.structs.replace(c, hlc=pack(wall.ms + hours_fast * hour, n))
            for n, c in enumerate(changes, start=1)
        ]
        for result in decode(sun.push(fast, batch_id="s-1"))["results"]:
            assert result["status"] == "applied"
            assert result.get("clamped", False) == (hours_fast > 24)
        assert stored_agreement(office).status == "collecting"
    wall.tick(60_000)
    with serving() as http:
        li.http = http
        rest = [Append(field="signatures", entry=attested(li, signer)) for signer in ("p-2", "p-3")]
        answer = li.push([li.change("agreement", "a-1", ops=rest)], batch_id="s-2")
        assert answer.status_code == 200, answer.text
        assert stored_agreement(office).status == "executed"
    store.close()


def test_an_agreement_executed_after_its_signers_were_cut_exports_a_bundle_that_verifies(office):
    sun, li = open_agreement(office, mediators=2)
    draft = office.store.states([("agreement", "a-1")])[("agreement", "a-1")]
    sign(sun, attested(sun, "p-3"), batch_id="s-1")
    # Li, offline, had not seen that signature: p-3 is no party after all.
    cut = li.change("agreement", "a-1", {"required_signers": ["p-1", "p-2"]}, seen=draft.vv)
    assert decode(li.push([cut], batch_id="e-1"))["results"][0]["status"] == "applied"
    content = agreements.content_hash(
        "a-1", Agreement(case="k-1", terms=TERMS["terms"], required_signers=["p-1", "p-2"])
    )
    sign(li, attested(li, "p-1", content), attested(li, "p-2", content), batch_id="s-2")
    executed = stored_agreement(office)
    assert executed.status == "executed" and len(executed.signatures) == 3  # p-3's kept

    bundle = office_agreements.bundle(office.directory, office.keys, "a-1")
    exported = agreements.export_bundle(bundle)
    assert agreements.verify_file(exported, office.keys.signing_public) == []
