"""Running the `llmos` command the way a user or a script does: a subprocess with
the environment given, and the one-line errors it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def llmos(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmos_jobs.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def newcomer(data_dir: Path, **variables: str) -> dict[str, str]:
    """The environment of someone who set nothing but where their data goes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    return {**env, "LLMOS_DATA_DIR": str(data_dir), **variables}


def assert_one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    for needle in needles:
        assert needle in errors[0], (needle, out.stderr)
