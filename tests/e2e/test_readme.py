"""The README as a test: its shell blocks, run in order as a new user would.

A fresh HOME (so a fresh ~/.llmos), no LLMOS_* variables, `llmos` on PATH running
this checkout. Each line of the shell blocks in SECTIONS runs in bash, in HOME, with
the shell variables earlier lines set. What the README claims a line prints follows
the arrow in its comment (``# → ...``, or ``# why → ...``) and is checked against
the line's output:

- ``...`` stands for anything, and a run of spaces for any whitespace;
- a placeholder (``JOB_ID``, ``MINDSPACE_ID``, ``cpu-up@HOST``: capitals ending in
  ``_ID``, or ``HOST``) captures what stands there, and later lines get it in place
  of the placeholder. That is the only substitution, besides the HTTP API's port;
- a claim that starts with ``error:`` says the line fails: exit status 1, that one
  line on stderr, no traceback.

Every line must exit 0 otherwise, without a traceback. `llmos up` and lines ending
in ``&`` keep running: they start in the background and count as started once their
claim shows in their output. Waits are for readiness, with a deadline that only
guards against a hang."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.services import _free_port
from tests.support.waiting import until

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTIONS = ("Using it", "Mindspaces", "Batches", "HTTP API", "Webhooks")
PLACEHOLDER = re.compile(r"\b(?:[A-Z][A-Z0-9]*_)+ID\b|\bHOST\b")
ARROW = "→"
HANG_GUARD_S = 300.0  # per line; a healthy run takes seconds


@dataclass
class Line:
    section: str
    command: str
    claim: str | None

    @property
    def keeps_running(self) -> bool:
        return self.command.startswith("llmos up") or self.command.endswith("&")


def readme_lines(text: str) -> list[Line]:
    """The commands of the bash blocks directly under the SECTIONS headings."""
    lines: list[Line] = []
    heading, in_block, pending = "", False, ""
    found: set[str] = set()
    for raw in text.splitlines():
        if not in_block and raw.startswith("#"):
            heading = raw.lstrip("#").strip()
        elif raw.strip() == "```bash":
            in_block = heading in SECTIONS
            found.update([heading] if in_block else [])
        elif raw.strip() == "```":
            in_block = False
        elif in_block:
            if raw.endswith("\\"):  # a command continued on the next line
                pending += raw[:-1] + " "
                continue
            logical, pending = pending + raw, ""
            command, claim = split_claim(logical)
            if command and not command.startswith("#"):
                lines.append(Line(heading, command, claim))
    assert found == set(SECTIONS), f"README sections without a bash block: {set(SECTIONS) - found}"
    return lines


def split_claim(line: str) -> tuple[str, str | None]:
    """The command, and what its comment claims it prints (after the arrow)."""
    arrow = line.find(ARROW)
    if arrow < 0:
        return line.strip(), None
    comment = line.rfind("#", 0, arrow)
    assert comment >= 0, f"README: a claim outside a comment: {line}"
    return line[:comment].strip(), line[arrow + len(ARROW):].strip()


def claim_pattern(claim: str) -> re.Pattern[str]:
    """The claim as a regular expression: placeholders capture (a claim captures anew:
    "the id this line printed"), ``...`` is anything."""
    parts: list[str] = []
    seen: set[str] = set()
    for piece in re.split(r"(\.\.\.|\s+|" + PLACEHOLDER.pattern + ")", claim):
        if not piece:
            continue
        if piece == "...":
            parts.append(".*?")
        elif piece.isspace():
            parts.append(r"\s+")
        elif PLACEHOLDER.fullmatch(piece):
            group = piece.lower()
            parts.append(f"(?P={group})" if group in seen else f"(?P<{group}>[^\\s\"'(),]+)")
            seen.add(group)
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts), re.DOTALL)


@dataclass
class NewUser:
    home: Path
    env: dict[str, str]
    port: int
    ids: dict[str, str] = field(default_factory=dict)
    background: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def localise(self, line: Line, text: str) -> str:
        """The HTTP API's port 8000 becomes a free one: other suites share the machine."""
        if line.section != "HTTP API":
            return text
        return text.replace(":8000", f":{self.port}").replace("--port 8000",
                                                              f"--port {self.port}")

    def prepare(self, line: Line) -> str:
        command = self.localise(line, line.command)
        for word in sorted(set(PLACEHOLDER.findall(command))):
            if word not in self.ids:
                pytest.fail(f"README line uses {word} before any line prints it: {command}")
            command = re.sub(rf"\b{word}\b", self.ids[word], command)
        return command

    def check(self, line: Line, output: str) -> None:
        if line.claim is None:
            return
        match = claim_pattern(self.localise(line, line.claim)).search(output)
        assert match, f"README says `{line.command}` prints {line.claim!r}; it printed:\n{output}"
        for group, value in match.groupdict().items():
            self.ids[group.upper()] = value

    def run(self, line: Line) -> None:
        command = self.prepare(line)
        if line.keeps_running:
            self.start(line, command)
            return
        state = self.home / ".readme-test-env"
        # `set -a`: a variable a line sets is there for the next line, as in one shell.
        script = f"set -a\n{command}\nstatus=$?\nenv -0 > {shlex.quote(str(state))}\nexit $status"
        out = subprocess.run(["bash", "-c", script], cwd=self.home, env=self.env,
                             capture_output=True, text=True, timeout=HANG_GUARD_S)
        output = out.stdout + out.stderr
        assert "Traceback" not in output, f"`{command}` printed a traceback:\n{output}"
        if line.claim is not None and line.claim.startswith("error:"):
            assert out.returncode == 1, f"`{command}` should fail:\n{output}"
            errors = out.stderr.strip().splitlines()
            assert len(errors) == 1, f"`{command}`: the error is not one line:\n{out.stderr}"
        else:
            assert out.returncode == 0, f"`{command}` exited {out.returncode}:\n{output}"
        if state.exists():
            self.env = dict(v.split("=", 1) for v in state.read_text().split("\0") if "=" in v)
        self.check(line, output)

    def start(self, line: Line, command: str) -> None:
        log = self.home / f".readme-test-{len(self.background)}.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen(["bash", "-c", f"exec {command.rstrip('&').strip()}"],
                                       cwd=self.home, env=self.env, stdout=sink,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append((process, log))
        assert line.claim is not None, f"README: say what `{command}` prints once it is up"
        claim = claim_pattern(self.localise(line, line.claim))

        def up() -> str | None:
            output = log.read_text(errors="replace")
            if claim.search(output):
                return output
            assert process.poll() is None, f"`{command}` exited {process.returncode}:\n{output}"
            return None

        self.check(line, until(up, f"`{command}` printed its claim", HANG_GUARD_S, poll_s=0.2))

    def stop(self) -> None:
        for process, log in reversed(self.background):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # `llmos up` stops its worker and Redis
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                pytest.fail(f"{process.args} did not stop on SIGTERM:\n{log.read_text()}")


@pytest.fixture
def new_user(tmp_path: Path) -> Iterator[NewUser]:
    home = tmp_path / "home"
    shims = tmp_path / "bin"
    home.mkdir()
    shims.mkdir()
    # `llmos` as the README's `make` installs it, but running this checkout.
    shim = shims / "llmos"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} '
                    f'exec {shlex.quote(sys.executable)} -m llmos_jobs.cli.main "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMOS_", "COLUMNS"))}
    env.update(HOME=str(home), PATH=f"{shims}{os.pathsep}{env.get('PATH', '')}")
    user = NewUser(home=home, env=env, port=_free_port())
    yield user
    user.stop()


def test_every_readme_command_works_on_a_fresh_machine(new_user: NewUser) -> None:
    for line in readme_lines(README.read_text()):
        new_user.run(line)
    stack_state = new_user.home / ".llmos" / "stack.json"
    assert stack_state.exists()
    new_user.stop()
    assert not stack_state.exists(), "`llmos up` left its state file behind"


def test_the_claim_syntax() -> None:
    pattern = claim_pattern("queued JOB_ID (priority 1, ...) for JOB_ID")
    match = pattern.search("queued ab12 (priority 1,\n queue lang.demo) for ab12")
    assert match and match["job_id"] == "ab12"
    assert not pattern.search("queued ab12 (priority 1, queue x) for cd34")
    lines = readme_lines("## Using it\n```bash\nllmos a \\\n  --b   # why → x\n# a comment\n```\n"
                         "## Mindspaces\n```bash\nllmos c\n```\n## Batches\n```bash\nd\n```\n"
                         "## HTTP API\n```bash\ne &\n```\n### Webhooks\n```bash\nf\n```\n")
    assert [(x.command, x.claim) for x in lines] == [
        ("llmos a    --b", "x"), ("llmos c", None), ("d", None), ("e &", None), ("f", None)]
    assert lines[3].keeps_running and not lines[0].keeps_running
