"""A real `lianxin serve` process on 127.0.0.1, set up through the real CLI."""

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from server.fleet.office import free_port, start_server, stop_process
from tests.conftest import PASSPHRASE

# What the office's operator would export before running `lianxin`.
OFFICE_ENV = {**os.environ, "LIANXIN_PASSPHRASE": PASSPHRASE}


def lianxin(data: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the `lianxin` command line against `data` (`env` added to the office's);
    its output, stripped."""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "--data", str(data), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**OFFICE_ENV, **(env or {})},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


@dataclass
class Server:
    data: Path
    url: str
    process: subprocess.Popen
    # Added to the office's environment when the server (re)starts.
    env: dict[str, str] = field(default_factory=dict)

    def user(self, name: str, role: str, *org_units: str) -> str:
        units = [arg for unit in org_units for arg in ("--org-unit", unit)]
        return lianxin(self.data, "user", "add", name, "--role", role, *units)

    def code(self, user_id: str) -> str:
        return lianxin(self.data, "code", user_id)

    def revoke(self, device_id: str) -> None:
        lianxin(self.data, "device", "revoke", device_id)

    def start(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.process = start_server(self.data, port, {**OFFICE_ENV, **self.env}, timeout_s=30)

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flush; what a power cut does."""
        self.process.kill()
        self.process.wait()


@pytest.fixture
def server(tmp_path):
    data = tmp_path / "office"
    lianxin(data, "init", "--admin", "Admin", "--org-unit", "Hangzhou")
    running = Server(data, f"http://127.0.0.1:{free_port()}", None)  # type: ignore[arg-type]
    running.start()
    yield running
    running.stop()
