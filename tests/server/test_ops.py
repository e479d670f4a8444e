"""Probes, metrics and logs: an operator sees the office's health and nothing about people."""

import json
import logging

from server.logs import JsonLines
from tests.server.test_app import GONGSHU, decode

SECRETS = ["He Jianguo", "+86 138 0000 1234", "Ceiling stained at Daguan 3-401"]


def test_health_and_readiness(office):
    assert office.http.get("/healthz").json() == {"status": "ok"}
    assert office.http.get("/readyz").json() == {"status": "ready"}
    office.store.vault.close()  # the key store is gone: not ready, and says so
    answer = office.http.get("/readyz")
    assert (answer.status_code, answer.json()) == (503, {"status": "unavailable"})


def test_metrics_count_requests_results_conflicts_and_quarantine(office):
    sun, li = office.enroll("mediator"), office.enroll("supervisor", org_units=["Hangzhou"])
    sun.push([sun.change("case", "k-1", {"title": "Drains", "location": GONGSHU})])
    li.push([li.change("case", "k-1", {"title": "Drains!"}), li.change("case", "k-1", {})], "b-2")
    sun.pull()
    sun.post("/v1/sync/pull", b"not msgpack")
    sun.pull_v2(sun.pull_v2_body())
    text = office.http.get("/metrics").text
    assert 'lianxin_sync_requests_total{endpoint="/v1/sync/push",outcome="ok"} 2' in text
    assert 'lianxin_sync_requests_total{endpoint="/v1/sync/pull",outcome="malformed"} 1' in text
    assert 'lianxin_sync_requests_total{endpoint="/v2/sync/pull",outcome="ok"} 1' in text
    assert 'lianxin_changes_total{result="conflict"} 1' in text
    assert 'lianxin_changes_total{result="rejected"} 1' in text
    assert "lianxin_open_conflicts 1" in text and "lianxin_quarantined 1" in text
    assert 'lianxin_sync_seconds_count{endpoint="/v1/sync/push"} 2' in text


def test_log_lines_are_json_and_name_no_one(office, caplog):
    caplog.set_level(logging.DEBUG)
    sun = office.enroll("mediator")
    party = {"name": SECRETS[0], "phone": SECRETS[1]}
    sun.push([sun.change("party", "p-1", party)])
    sun.push([sun.change("party", "p-1", {"households": "wrong"})], "b-2")  # rejected
    sun.push([sun.change("case", "k-1", {"title": SECRETS[2]})], "b-3")
    decode(sun.pull())
    sun.post("/v1/sync/push", b"garbage " + SECRETS[0].encode())
    lines = [JsonLines().format(record) for record in caplog.records]
    assert any(json.loads(line).get("endpoint") == "/v1/sync/push" for line in lines)
    for line in lines:
        json.loads(line)  # every line is one JSON object
        for secret in SECRETS:
            assert secret not in line
