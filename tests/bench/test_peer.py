"""The side-by-side workload (bench/peer.py): both servers get the same 1 KB documents."""

import random

import msgspec

from bench.peer import DOC_BYTES, documents
from schemas.records import Case
from sync.clock import Clock
from sync.merge import apply_change, materialize


def test_documents_are_about_one_kilobyte_of_json():
    sizes = [len(msgspec.json.encode(d.couch())) for d in documents(50, "u-1", random.Random(3))]
    assert all(DOC_BYTES - 6 <= size <= DOC_BYTES + 6 for size in sizes), sizes


def test_the_lianxin_change_carries_what_the_couch_document_holds():
    (doc,) = documents(1, "u-1", random.Random(5))
    outcome = apply_change(None, doc.change("dev-1", Clock()))
    assert outcome.rejected is None
    case = materialize(outcome.state)
    assert isinstance(case, Case)
    couch = doc.couch()
    assert case.summary == couch["summary"] and case.title == couch["title"]
    assert sorted(case.parties) == sorted(couch["parties"])
    assert list(case.mediators) == couch["mediators"]
