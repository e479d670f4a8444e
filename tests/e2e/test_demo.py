"""`lianxin demo` as the README runs it: a fresh office, a simulated week through its
server, a summary, and the console showing the week's cases."""

import os
import re
import subprocess
import sys

import httpx

from tests.e2e.conftest import free_port


def test_the_demo_serves_a_simulated_week_that_the_console_shows(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LIANXIN_PASSPHRASE"}
    command = ["--data", str(tmp_path / "demo"), "demo", "--port", str(port), "--days", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", *command, "--devices", "12"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        printed = []
        for line in process.stdout:
            printed.append(line)
            if line.startswith("Serving until"):
                break
        text = "".join(printed)
        assert "Enrolled 12 devices" in text and "day 2/2" in text, text
        cases = int(re.search(r"The office holds (\d+) cases", text).group(1))
        # The seed holds 3 cases; the phones made more, in the three districts.
        assert cases > 3, text
        supervisor, password = re.search(
            r"supervisor: user id (\S+), password '([^']+)'", text
        ).groups()

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as browser:
            signed_in = browser.post(
                "/console/login",
                data={"user_id": supervisor, "password": password, "next": "/console/cases"},
                follow_redirects=True,
            )
            assert signed_in.status_code == 200 and signed_in.url.path == "/console/cases"
            listed = browser.get("/api/cases").json()
            assert listed["total"] == cases
            districts = {row["org_unit"].split("/")[1] for row in listed["cases"]}
            assert {"Xihu", "Binjiang"} <= districts
            assert browser.get("/api/stats").status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()
    assert process.returncode == 0
