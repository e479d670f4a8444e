"""DESIGN scenario 2: 66 households and one restaurant sign one agreement on two phones."""

import random
import subprocess
import sys
from contextlib import ExitStack

import httpx
import msgspec

from schemas import Add, Agreement
from sync import agreements
from sync.client import DeviceClient
from tests.e2e.conftest import lianxin

PIN = "246810"

BAIDI = {"city": "Hangzhou", "district": "Xihu", "street": "Beishan", "community": "Baidi"}
HOUSEHOLDS = [f"p-household-{n:02d}" for n in range(1, 67)]
SIGNERS = [*HOUSEHOLDS, "p-owner"]


class LosesPushAnswers(httpx.HTTPTransport):
    """Delivers every push, but sometimes loses the answer: the phone must resend."""

    def __init__(self, rng: random.Random, rate: float) -> None:
        super().__init__()
        self.rng = rng
        self.rate = rate

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/v2/sync/push" and self.rng.random() < self.rate:
            response.read()
            response.close()
            raise httpx.ReadError("the answer was lost on the way back")
        return response


def sync_until_done(device):
    for _ in range(20):
        try:
            return device.sync()
        except httpx.TransportError:
            continue  # resend: the same batches, the same bytes
    raise AssertionError("sync never got through")


def test_scenario_2_one_agreement_with_67_signatures_from_two_offline_phones(server, tmp_path):
    rng = random.Random(2)
    with ExitStack() as stack:
        flaky = stack.enter_context(
            httpx.Client(base_url=server.url, transport=LosesPushAnswers(rng, 0.3), timeout=30)
        )

        def phone(name, role, org_unit="Hangzhou/Xihu"):
            user_id = server.user(name, role, org_unit)
            device = stack.enter_context(
                DeviceClient(tmp_path / f"{name}.db", flaky, passphrase=PIN)
            )
            device.enroll(server.code(user_id))
            return device

        chen = phone("Chen", "supervisor")
        sun, li = phone("Sun", "mediator"), phone("Li", "mediator")
        chen.edit(
            "case",
            "k-grease",
            {
                "title": "Grease fouls the Baidi block",
                "location": BAIDI,
                "status": "assigned",
                "households": 66,
            },
            [Add(field="mediators", value=m.identity.user_id) for m in (sun, li)]
            + [Add(field="agreements", value="a-grease-1")],
        )
        chen.edit(
            "agreement",
            "a-grease-1",
            {
                "case": "k-grease",
                "status": "draft",
                "required_signers": SIGNERS,
                "terms": "The owner installs a grease trap within 14 days and pays for a quarterly"
                " drain cleaning; the households withdraw their petition.",
            },
        )
        sync_until_done(chen)
        sync_until_done(sun)
        sync_until_done(li)

        # Offline, over several days: each phone collects its share, in its own order.
        share = {sun: [*HOUSEHOLDS[:33], "p-owner"], li: HOUSEHOLDS[33:]}
        for mediator in share:
            rng.shuffle(share[mediator])
        for _day in range(4):
            for mediator in rng.sample([sun, li], 2):
                count = rng.randint(5, 12)
                today, share[mediator] = share[mediator][:count], share[mediator][count:]
                for signer in today:
                    ink = f"handwriting of {signer}".encode()
                    mediator.sign_agreement("a-grease-1", signer, handwriting=ink)
                if rng.random() < 0.6:  # sometimes in coverage, sometimes not
                    sync_until_done(mediator)
        for mediator in share:
            for signer in share[mediator]:
                mediator.sign_agreement("a-grease-1", signer, handwriting=b"ink")
        for device in rng.sample([sun, li, sun, li, chen], 5):
            sync_until_done(device)
        for device in (sun, li, chen):
            sync_until_done(device)

        office_key = sun.identity.office.signing_key
        for device in (sun, li, chen):
            agreement = device.record("agreement", "a-grease-1")
            assert isinstance(agreement, Agreement)
            assert agreement.status == "executed"
            assert sorted(s.signer for s in agreement.signatures) == sorted(SIGNERS)
            receipt = agreement.receipt
            assert receipt is not None
            message = agreements.receipt_message("a-grease-1", receipt)
            agreements.signing.verify(office_key, receipt.signature, message, "receipt")
            assert receipt.content_hash == agreements.content_hash("a-grease-1", agreement)
            assert receipt.signatures_hash == agreements.signatures_hash(
                "a-grease-1", agreement.signatures
            )

    # Exactly one execution in the office's log, and the bundle verifies offline.
    out = tmp_path / "a-grease-1.json"
    exported = lianxin(server.data, "agreement", "export", "a-grease-1", "--out", str(out))
    pinned = sun.identity.office.signing_key.hex()  # the key the office published
    assert f"--office-key {pinned}" in exported
    verified = lianxin(server.data, "agreement", "verify", str(out), "--office-key", pinned)
    assert verified.startswith("OK a-grease-1: 67")
    bundle = msgspec.json.decode(out.read_bytes())
    assert bundle["agreement"]["receipt"]["office_id"] == sun.identity.office.office_id
    # One changed letter in the terms, and verification says exactly that.
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(out.read_bytes().replace(b"grease trap", b"grease tray"))
    pinning = ["--office-key", pinned]
    verdict = subprocess.run(
        [sys.executable, "-m", "server.cli", "agreement", "verify", str(tampered), *pinning],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verdict.returncode == 1
    assert "other content than the agreement's" in verdict.stdout
