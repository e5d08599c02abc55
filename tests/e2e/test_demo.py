"""`llmos demo` with no variables set: embedded Redis, SQLite, a worker, a real model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_pipeline_and_stops_what_it_started(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env["LLMOS_DATA_DIR"] = str(tmp_path)
    env.pop("COLUMNS", None)  # output to a pipe, as in CI logs
    out = subprocess.run([sys.executable, "-m", "llmos_jobs.cli.main", "demo"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all jobs succeeded" in out.stdout
    assert "redis+socket://" in out.stdout  # the embedded broker, not a local service
    rows = [line for line in out.stdout.splitlines() if re.match(r"│ [0-9a-f]{32} │", line)]
    assert len(rows) == 12, out.stdout  # one whole row per job, every id in full
    for kind in ("model_op", "generate", "mindspace_turn"):
        assert sum(f" {kind} " in row and " succeeded " in row for row in rows) >= 1, kind
    assert "…" not in out.stdout
    assert "6 messages kept" in out.stdout
    assert not (tmp_path / "demo" / "stack.json").exists()
