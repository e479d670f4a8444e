"""The move benchmark (bench/move.py) runs, and a move holds the writer gate a chunk at a time."""

from bench.move import run


def test_a_small_run_moves_in_chunks_and_the_baseline_in_one_transaction(tmp_path):
    moved, back, baseline = run(tmp_path, cases=1500, rounds=1)
    assert moved[0].startswith("move to Fuzhou/") and back[0] == "move back to Fuzhou"
    for _, whole, longest, transactions in (moved, back):
        assert transactions > 2 and 0 < longest < whole
    assert baseline[0] == "one transaction (baseline)" and baseline[3] == 1
