"""Recording a benchmark run in docs/BENCHMARKS.md (bench/recording.py)."""

from bench.recording import Row, dated_block, record

TABLE = [Row("push (docs/s)", "1,000", "≥ 2× peer", "met", "peer 400", "2.50×")]


def test_a_new_section_goes_at_the_end_and_later_runs_stay_in_it(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Recorded runs\n\n| date |\n|---|\n")
    record("## Peer", "How it runs.", dated_block("run one", TABLE, "first"), path)
    text = path.read_text()
    assert text.index("## Recorded runs") < text.index("## Peer") < text.index("run one")
    assert "| push (docs/s) | 1,000 | ≥ 2× peer | met | peer 400 | 2.50× |" in text

    path.write_text(text + "\n## Another\n\nlater section\n")
    record("## Peer", "How it runs.", dated_block("run two", TABLE), path)
    text = path.read_text()
    assert text.count("## Peer") == 1 and text.count("How it runs.") == 1
    assert text.index("run one") < text.index("run two") < text.index("## Another")
