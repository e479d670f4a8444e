"""A smoke run of the long kill run (bench/kill_run.py): three kills, two phones.

The long run (200 kills) is a script whose figures are in docs/RELIABILITY.md;
this keeps the script itself working, and its checks honest, in CI.
"""

import re

from bench import kill_run


def test_three_kills_lose_nothing_and_duplicate_nothing(tmp_path, capsys):
    status = kill_run.main(
        ["--kills", "3", "--devices", "2", "--max-up", "0.4", "--keep", str(tmp_path / "run")]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "kills survived: 3 of 3" in out
    for figure in ("lost: 0", "duplicated: 0", "5xx: 0"):
        assert re.search(rf"^{figure}$", out, re.M), out
    made = int(re.search(r"^changes: (\d+) made", out, re.M).group(1))
    assert made > 0, "the phones made no change: the smoke run proved nothing"
    assert "integrity_check lianxin.db: ok" in out
    assert "audit verify: OK" in out
