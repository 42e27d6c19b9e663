"""docs/grpcurl.md is run as written: its sh blocks, in order, in one shell, against a server."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

WALKTHROUGH = pathlib.Path(__file__).resolve().parents[1] / "docs" / "grpcurl.md"


def sh_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def test_the_grpcurl_walkthrough_runs_as_written(target: str) -> None:
    script = "set -eu\n" + "\n".join(sh_blocks(WALKTHROUGH.read_text()))
    env = dict(os.environ, SERVER=target)
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert "imageloc.v1.ImageService" in out
    assert '"status": "SERVING"' in out
    assert re.search(r"created [0-9a-f-]{36}", out)
    assert "Code: FailedPrecondition" in err
    assert '"reason":"LAST_LOCATION"' in err
    assert out.count("grpcurl exited 73") == 2
    assert "grpcurl exited 74" in out  # ABORTED: the stale etag
    assert "Code: Aborted" in err
    assert "grpcurl exited 69" in out  # NOT_FOUND after delete
    assert '"reason":"IMAGE_NOT_FOUND"' in err
