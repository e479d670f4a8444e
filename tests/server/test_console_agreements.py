"""Agreements in the console: k of N signed, every signature checked and why, receipt, export.

DESIGN scenario 2: a supervisor checks that an agreement is validly signed
and downloads the bundle that anyone can verify with no server.
"""

import msgspec
import pytest

from schemas import Agreement, Signature
from schemas.changes import Append
from server import agreements as office_agreements
from server import audit
from server.console.agreements import check
from sync import agreements
from tests.server.test_agreements import SIGNERS, TERMS, attested, open_agreement, sign, withdrawal
from tests.server.test_console_triage import sign_in, supervisor


@pytest.fixture
def signing(office):
    """An agreement on a Gongshu case: p-1 and p-2 signed, a forged signature for p-3."""
    (sun,) = open_agreement(office)
    sign(sun, attested(sun, "p-1"), attested(sun, "p-2"), batch_id="s-1")
    forged = {**attested(sun, "p-3"), "signature": bytes(64)}
    (refused,) = sign(sun, forged, batch_id="s-2")["results"]
    assert refused["reason"] == "signature_invalid"
    return sun


def exported(office, agreement_id="a-1"):
    answer = office.http.get(f"/console/agreements/{agreement_id}/export")
    assert answer.status_code == 200, answer.text
    assert "attachment" in answer.headers["content-disposition"]
    return answer.content


def test_the_list_and_the_page_show_k_of_n_and_why_a_signature_does_not_count(office, signing):
    sign_in(office, supervisor(office))
    (row,) = office.http.get("/api/agreements").json()["agreements"]
    assert (row["agreement_id"], row["status"], row["signed"], row["required"]) == (
        "a-1",
        "collecting",
        2,
        3,
    )
    assert "2 of 3" in office.http.get("/console/agreements").text

    page = office.http.get("/api/agreements/a-1").json()
    assert (page["signed"], page["required"], page["receipt"]) == (2, 3, None)
    assert [(s["signer"], s["signed"]) for s in page["signers"]] == [
        ("p-1", True),
        ("p-2", True),
        ("p-3", False),
    ]
    assert [(s["signer"], s["verified"], s["counts"]) for s in page["signatures"]] == [
        ("p-1", True, True),
        ("p-2", True, True),
    ]
    (forged,) = page["refused"]
    assert (forged["signer"], forged["reason"], forged["device_id"]) == (
        "p-3",
        "signature_invalid",
        signing.device_id,
    )
    assert forged["why"].startswith("bad signature")
    html = office.http.get("/console/agreements/a-1")
    assert html.status_code == 200
    assert "2 of 3 required signers have signed" in html.text
    assert "bad signature" in html.text


def test_export_downloads_the_verifiable_bundle_and_is_audited(office, signing):
    chen = supervisor(office)
    sign_in(office, chen)
    early = exported(office)
    assert "not executed" in " ".join(agreements.verify_file(early, office.keys.signing_public))

    sign(signing, attested(signing, "p-3"), batch_id="s-3")
    page = office.http.get("/api/agreements/a-1").json()
    assert (page["status"], page["signed"], page["required"]) == ("executed", 3, 3)
    receipt = page["receipt"]
    assert (receipt["verified"], receipt["problems"]) == (True, [])
    assert receipt["office_id"] == office.keys.office_id

    data = exported(office)
    assert agreements.verify_file(data, office.keys.signing_public) == []
    # The very bytes `lianxin agreement export` writes: one function makes both.
    bundle = office_agreements.bundle(office.directory, office.keys, "a-1")
    assert data == agreements.export_bundle(bundle)
    exports = [e for e in audit.entries(office.store.db) if e.action == "export"]
    by = f"user:{chen.user_id}"
    assert [(e.actor, e.subject) for e in exports] == [(by, "agreement/a-1")] * 2
    assert exports[-1].detail["status"] == "executed"
    assert audit.verify(office.store.db) == []


def test_signatures_of_a_device_revoked_later_still_count(office, signing):
    sign(signing, attested(signing, "p-3"), batch_id="s-3")  # executes
    # The phone is lost after the fact (DESIGN scenario 4): its signatures still count.
    office.directory.revoke(signing.device_id, office.wall.ms)
    sign_in(office, supervisor(office))
    page = office.http.get("/api/agreements/a-1").json()
    assert page["status"] == "executed" and page["signed"] == 3
    assert all(s["counts"] for s in page["signatures"])
    assert all("revoked later" in s["note"] for s in page["signatures"])


def test_a_withdrawal_stops_a_signature_counting(office):
    (sun,) = open_agreement(office)
    sign(sun, attested(sun, "p-1"), attested(sun, "p-2"), batch_id="s-1")
    sun.push([sun.change("agreement", "a-1", ops=[withdrawal(sun, "p-2")])], batch_id="w-1")
    sign_in(office, supervisor(office))
    page = office.http.get("/api/agreements/a-1").json()
    assert page["signed"] == 1
    by_signer = {s["signer"]: s for s in page["signatures"]}
    assert (by_signer["p-2"]["verified"], by_signer["p-2"]["counts"]) == (True, False)
    assert by_signer["p-2"]["reason"] == "withdrawn"
    assert [w["signer"] for w in page["withdrawals"]] == ["p-2"]
    assert {s["signer"]: s["withdrawn"] for s in page["signers"]}["p-2"] is True
    assert "withdrawn" in office.http.get("/console/agreements/a-1").text


def test_each_reason_a_signature_fails_the_check(office):
    (sun,) = open_agreement(office)
    device = office.directory.device(sun.device_id)
    draft = Agreement(case="k-1", terms=TERMS["terms"], required_signers=SIGNERS)
    good = msgspec.convert(attested(sun, "p-1"), Signature)
    assert check("a-1", draft, good, device) == ("", "")
    assert check("a-1", draft, good, None)[0] == "unknown_device"
    changed = msgspec.structs.replace(draft, terms="No trap after all.")
    assert check("a-1", changed, good, device)[0] == "signature_content_mismatch"
    forged = msgspec.structs.replace(good, signature=bytes(64))
    assert check("a-1", draft, forged, device)[0] == "signature_invalid"
    stranger = office.enroll("mediator", name="Li")
    assert check("a-1", draft, good, office.directory.device(stranger.device_id))[0] == (
        "signature_invalid"
    )


def test_another_districts_supervisor_gets_404_and_no_export(office, signing):
    sign_in(office, supervisor(office, ["Hangzhou/Xihu"]))
    assert office.http.get("/api/agreements").json()["agreements"] == []
    assert office.http.get("/api/agreements/a-1").status_code == 404
    assert office.http.get("/console/agreements/a-1").status_code == 404
    assert office.http.get("/console/agreements/a-1/export").status_code == 404
    assert [e for e in audit.entries(office.store.db) if e.action == "export"] == []


def test_a_refused_signature_pushed_in_compact_form_shows_why(office):
    (sun,) = open_agreement(office)
    forged = {**attested(sun, "p-1"), "signature": bytes(64)}
    change = sun.change("agreement", "a-1", ops=[Append(field="signatures", entry=forged)])
    (refused,) = sun.pushed([change], "s-1", version=2)["results"]
    assert refused["reason"] == "signature_invalid"
    sign_in(office, supervisor(office))
    (shown,) = office.http.get("/api/agreements/a-1").json()["refused"]
    assert (shown["change_id"], shown["signer"], shown["reason"]) == (
        change.change_id,
        "p-1",
        "signature_invalid",
    )
