"""The soak script's short CI setting: a few seconds of mixed load, no errors, RSS levelled off.

Runs bench/soak.py as CI would, once per backend; a long soak is the same command with more seconds.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

SOAK = pathlib.Path(__file__).resolve().parents[1] / "bench" / "soak.py"
CI_SECONDS = 5


def test_the_short_soak_reports_calls_errors_and_rss_at_start_and_end(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", str(CI_SECONDS), "--concurrency", "4",
         "--images", "16", "--database", database_url],
        capture_output=True, text=True, timeout=CI_SECONDS + 120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    start = re.search(
        r"^start: calls (\d+), errors (\d+), server RSS ([\d.]+) MiB$", done.stdout, re.M
    )
    end = re.search(
        r"^end: calls ([\d,]+) .*, errors (\d+), .* server RSS ([\d.]+) MiB$", done.stdout, re.M
    )
    assert start, done.stdout
    assert end, done.stdout
    assert int(end[1].replace(",", "")) > 0
    assert end[2] == "0"
    assert float(start[3]) > 0
    assert float(end[3]) > 0
    assert "levelled off" in done.stdout
    assert "server exit status after SIGTERM: 0" in done.stdout
    assert done.stdout.rstrip().endswith("verdict: PASS")
