"""What the process tests share: start `python ...` in a session of its own, find what it started, kill it all.

Every process started here carries a tag in its environment, which its children inherit, torchrun's
workers too (they sit in sessions of their own, out of reach of the launcher's group). When the
test's block ends, the launcher's group and the group of every tagged process are killed, so
nothing a test starts outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TAG = "GDTRAIN_TEST_TAG"


def tagged(tag: str) -> dict[int, dict[str, str]]:
    """The live processes whose environment carries `TAG=tag`: pid → environment."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = dict(
                    v.split("=", 1) for v in (entry / "environ").read_text(errors="replace").split("\0") if "=" in v
                )
            except OSError:  # gone, or a zombie
                continue
            if env.get(TAG) == tag:
                found[int(entry.name)] = env
    return found


@dataclass
class Launch:
    """A started `python ...` process, its output files and the tag its children inherit."""

    process: subprocess.Popen
    tag: str
    out: IO[str]
    err: IO[str]

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """Wait for the exit; its status and output."""
        code = self.process.wait(timeout)
        return subprocess.CompletedProcess(self.process.args, code, *(self.output(f) for f in (self.out, self.err)))

    @staticmethod
    def output(file: IO[str]) -> str:
        file.seek(0)
        return file.read()

    def ranks(self) -> dict[int, int]:
        """The workers' pids by rank."""
        return {int(env["RANK"]): pid for pid, env in tagged(self.tag).items() if "RANK" in env}

    def kill(self) -> None:
        """SIGKILL the launcher's group and every tagged process's group."""
        for pid in [self.process.pid, *tagged(self.tag)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


@contextlib.contextmanager
def launched(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Iterator[Launch]:
    """`python *args` in a session of its own (in `cwd`); killed with everything it started when the block ends."""
    tag = uuid.uuid4().hex
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        full_env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", TAG: tag} | (env or {})
        process = subprocess.Popen(
            [sys.executable, *map(str, args)],
            stdout=out,
            stderr=err,
            text=True,
            env=full_env,
            start_new_session=True,
            cwd=cwd,
        )
        launch = Launch(process, tag, out, err)
        try:
            yield launch
        finally:
            launch.kill()
