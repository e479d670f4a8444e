"""The crowded-party benchmark (bench/popular_party.py) runs and checks what it built."""

from bench.popular_party import BATCH, run


def test_a_small_run_links_every_case_it_pushed_to_the_party(tmp_path):
    crowded, alone, linking = run(tmp_path, linked=600, rounds=1)
    assert len(crowded) == len(alone) == 1
    assert min(crowded + alone) > 0
    assert linking == 600 + BATCH  # the built cases, then the one crowded batch
