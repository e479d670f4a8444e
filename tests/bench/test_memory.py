"""Reading a process's memory (bench/memory.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.memory import memory, server_pid


def test_memory_reads_this_process():
    now = memory(os.getpid())
    assert 0 < now.rss <= now.peak
    assert now.anon + now.file <= now.rss + 4096 * 1024  # RssShmem is the rest
    assert now.threads >= 1


def test_server_pid_finds_the_child_serving_a_port():
    # A stand-in with `serve --port N` in its command line, as `lianxin serve` has.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "serve", "--port", "45678"]
    )
    try:
        # `lianxin serve` answers HTTP before it is looked for; this one has only to exec.
        deadline = time.monotonic() + 10
        while b"serve" not in Path(f"/proc/{child.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert server_pid("http://127.0.0.1:45678") == child.pid
    finally:
        child.kill()
        child.wait()
