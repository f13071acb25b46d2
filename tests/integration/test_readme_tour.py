"""README's "A five-minute tour", walked as a newcomer would: the bash blocks of steps 1-13, taken from README by
their step headings, pasted into one bash session (set -euo pipefail) against a stack started the way `make up`
starts it, on free ports and a state dir of its own. Each block has a time limit, and what the prose says the
block shows is checked in its output. Step 14 (the drill on the dashboard) is left out: it takes minutes of
faults, and tests/integration/test_dashboard.py and test_drills.py cover it."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fapiao.infra import free_port

REPO = Path(__file__).resolve().parents[2]
LAST_STEP = 13  # step 14 runs a drill for minutes; the drill and dashboard tests cover it
BLOCK_TIMEOUT = 60.0
DONE = "__TOUR_BLOCK_DONE__"
TOUR_TMP = "/tmp/"  # noqa: S108 - the tour's scratch files, replaced by a directory of this test's own

# What each step's prose promises, as patterns its blocks' output must contain (in any order).
EXPECTED: dict[int, list[str]] = {
    2: [r'"status":"accepted"', r"\nHTTP 201\n"],
    3: [r"status: confirmed", r'"status": "confirmed"', r'"receipt_no": "TS\d+"', r'"kind": "confirmed"',
        r'"status":"confirmed"', r'"receipt_no":"TS\d+"', r"HTTP 200 application/pdf"],
    4: [r'"type": "cn\.fapiao\.invoice\.issued\.v1"', r'"specversion": "1\.0"'],
    5: [r'"path":"buyer\.tax_id"', r'"path":"lines\[0\]\.tax_rate"', r'"path":"total"', r"\nHTTP 422\n"],
    6: [r"HTTP/1\.1 201 Created\nHTTP/1\.1 201 Created\nidempotent-replayed: true", r'"path":"Idempotency-Key"',
        r"\nHTTP 422\n"],
    7: [r'"created": 2', r'"existing": 1', r'"conflicts": 0', r'"invalid": 1'],
    8: [r"2 invoices in 3 rows: 1 created, 0 already present, 0 conflicts, 1 rejected", r"line_tax_rate",
        r"exit status 1"],
    9: [r"API key \(shown once.*fsk_"],
    10: [r'"secret":"whsec_', r'"secret_shown_once":true', r"\nHTTP 201\n(.|\n)*\nHTTP 201\n",
          r"\nHTTP 202\n(.|\n)*\nHTTP 202\n", r'"type":"webhook\.ping"', r"\.eml",
          r"finance@example\.com", r'"kind": "ping"', r'"status": "delivered"'],
    11: [r'"lost":\[', r'"status":"open"(.|\n)*\nHTTP 201\n', r"CASE-\d{8}-\d{6}", r"case: resolved",
         r"status: confirmed", r'"type":"case\.resolved"', r'"kind": "single"'],
    12: [r'"month"', r"Both sides agree\.", r"Wrote .*report\.html"],
    13: [r"status: stuck", r'"type":"invoice\.stuck"', r'"status": "stuck"', r'"kind": "stuck"',
         r'"until":"resolved"\}\nHTTP 201\n', r'"until":"resolved"\}\nHTTP 200\n', r"status: confirmed",
         r'"type":"invoice\.recovered"', r'\{"items":\[\]\}', r"evidence\.pdf", r"evidence\.json",
         r"invoice\.pdf"],
}


def tour_blocks(readme: str) -> dict[int, list[str]]:
    """Step number -> its ```bash blocks, from the tour section, split at the bold step headings."""
    section = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    steps: dict[int, list[str]] = {}
    for part in re.split(r"(?m)^(?=\*\*\d+\. )", section)[1:]:
        number = int(re.match(r"\*\*(\d+)\.", part).group(1))  # type: ignore[union-attr]
        steps[number] = re.findall(r"(?ms)^```bash\n(.*?)^```", part)
    return steps


def test_tour_steps_are_found() -> None:
    steps = tour_blocks((REPO / "README.md").read_text())
    assert list(steps)[:LAST_STEP] == list(range(1, LAST_STEP + 1)), list(steps)
    assert all(steps[n] for n in range(1, LAST_STEP + 1)), "every step has a bash block"
    assert set(EXPECTED) <= set(steps)


class Session:
    """One bash process; each block is written to a file and sourced, so variables and functions carry over and
    no command of a block can read the next block from bash's stdin."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self._send("set -euo pipefail\n")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def run(self, name: str, code: str, timeout: float) -> tuple[str, str | None]:
        """(output, None) once the block ends well, else (output, what went wrong)."""
        path = self.cwd / f"{name}.sh"
        path.write_text(code)
        self._send(f"source {path}\necho; echo {DONE}\n")  # a block's last line may lack its newline
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return "".join(out), f"still running after {timeout:.0f} s"
            if line is None:
                return "".join(out), f"bash exited with status {self.proc.wait(10)}"
            if line.strip() == DONE:
                return "".join(out), None
            out.append(line)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # bash and what the tour started in the background
        self.proc.wait(10)
        self.reader.join(10)  # it reads to the end of bash's output, then the pipes can be closed
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.mark.timeout(360)
def test_readme_tour_steps_1_to_13_do_what_the_prose_says(stack_home: Path) -> None:
    steps = tour_blocks((REPO / "README.md").read_text())
    names = ("ISSUER", "SYNC", "RECONCILER", "NOTIFIER", "TAXSTORE", "KAFKA", "KAFKA_CONTROLLER", "PG", "SMTP")
    ports = {f"FAPIAO_{n}_PORT": str(free_port()) for n in names}
    run = stack_home / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAPIAO_")}
    # Step 13 says to restart with a short FAPIAO_STUCK_AFTER; a short digest window keeps the waits short.
    stack_env = {**env, **ports, "FAPIAO_STACK_DIR": str(run), "FAPIAO_STUCK_AFTER": "20s",
                 "FAPIAO_DIGEST_WINDOW": "2s"}
    # The tour runs from a repository root: here a directory whose .run is the stack's and whose .venv is ours.
    home = stack_home / "tour"
    (home / "tmp").mkdir(parents=True)
    (home / ".venv").symlink_to(Path(sys.executable).parents[1])
    tour_env = {**env, **ports, "FAPIAO_STACK_DIR": str(run), "HOOK_PORT": str(free_port())}

    def stack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fapiao.stack", *args], env=stack_env, capture_output=True,
                              text=True, timeout=240, cwd=REPO)

    session: Session | None = None
    try:
        up = stack("up")
        assert up.returncode == 0, up.stdout + up.stderr
        (home / ".run").symlink_to(run)
        session = Session(home, tour_env)
        for number in range(1, LAST_STEP + 1):
            output = ""
            for i, block in enumerate(steps[number]):
                code = block.replace(TOUR_TMP, str(home / "tmp") + "/")  # files of its own
                out, failure = session.run(f"step{number}-{i}", code, BLOCK_TIMEOUT)
                output += out
                assert failure is None, \
                    f"step {number}, block {i + 1}: {failure}\n--- block\n{block}\n--- output\n{out}"
            missing = [p for p in EXPECTED.get(number, []) if not re.search(p, output)]
            assert not missing, f"step {number}: output lacks {missing}\n--- output\n{output[-6000:]}"
        mails = sorted((run / "mail").glob("*.eml"))
        assert len(mails) >= 4, "e-mails: the ping, case.resolved, invoice.stuck, invoice.recovered"
    finally:
        if session is not None:
            session.close()
        down = stack("down")
    assert down.returncode == 0, down.stdout + down.stderr
