"""The run folder: config.yaml, metrics.jsonl, log.txt, and console output mirrored to the log.

A write that fails (a full disk, a folder made unwritable) is a one-line error naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from resnetlab.errors import ResnetlabError
from resnetlab.files import writable_folder, write_atomically, writing

# Metrics that measure the machine, not the run: checkpoints and fingerprints leave them out.
TIMINGS = ("samples_per_s", "elapsed_s", "train_s")
# config keys that config.yaml and the checkpoints' recipe leave out: where a run was written
REPLAY_OMITS = ("out", "resume", "overwrite")


def fingerprint(run_dir: str | Path) -> dict[str, Any]:
    """What the exact-resume promise covers: the sha256 of ``last``/``best.safetensors`` and
    every epoch's metrics but the timings. A run resumed any number of times on the CPU has
    the fingerprint of the same run never stopped."""
    run_dir = Path(run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {
        **{
            name: hashlib.sha256((run_dir / f"{name}.safetensors").read_bytes()).hexdigest()
            for name in ("last", "best")
        },
        "metrics": [
            {key: value for key, value in json.loads(line).items() if key not in TIMINGS}
            for line in lines
        ],
    }


class RunDir:
    """One run's output folder. Created and checked for writability before any training.

    Use it as a context manager: on leaving, log.txt is closed, and an error that ended the
    run is written to it, so a folder left by a failed run says why it failed.
    """

    ran_as = ""  # what --device and --precision resolved to, once known: "cpu bf16, ..."

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        writable_folder(self.path)
        self._log = open(self.path / "log.txt", "a", encoding="utf-8")  # noqa: SIM115

    def file(self, name: str) -> Path:
        """Path of a file inside the run folder."""
        return self.path / name

    def print(self, line: str) -> None:
        """Print a line to the console and append it to log.txt."""
        print(line, flush=True)
        with writing(self.file("log.txt"), "the log"):
            self._log.write(line + "\n")
            self._log.flush()

    def write_config(self, config: dict[str, Any]) -> None:
        """Write config.yaml, which ``--config`` replays as a new run: without the run's own
        folder (``out``) and ``resume``, so a replay neither writes into this run nor resumes it.
        A comment above it says what ``auto`` device and precision resolved to here."""
        kept = {key: value for key, value in config.items() if key not in REPLAY_OMITS}
        ran_as = f"# ran as: {self.ran_as} (auto resolves anew on each machine)\n"
        text = (ran_as if self.ran_as else "") + yaml.safe_dump(kept, sort_keys=False)
        self._write("config.yaml", text, "the config")

    def _write(self, name: str, text: str, what: str) -> None:
        """Replace the file ``name`` by ``text`` atomically."""
        write_atomically(self.file(name), lambda f: f.write(text.encode()), what)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl."""
        path = self.file("metrics.jsonl")
        with writing(path, "the metrics"), open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replace metrics.jsonl by ``records`` (a resumed run drops lines written after the
        state it continues from), via a temporary file and a rename."""
        self._write("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records), "the metrics")

    def write_json(self, name: str, data: Any) -> None:
        """Write a JSON file in the run folder."""
        self._write(name, json.dumps(data, indent=2) + "\n", "the file")

    def __enter__(self) -> RunDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):  # a full disk: the console still says why it failed
            try:
                if exc is not None:
                    reason = str(exc) if isinstance(exc, ResnetlabError) else repr(exc)
                    self._log.write(f"error: {reason}\n")
            finally:
                self._log.close()


class ReplicaRunDir(RunDir):
    """The run folder as the processes other than rank 0 see it under ``torchrun``: they
    print and write nothing, so that one process owns every file."""

    def __init__(self, path: str | Path) -> None:  # creates nothing
        self.path = Path(path)

    def print(self, line: str) -> None:
        """Rank 0 prints."""

    def write_config(self, config: dict[str, Any]) -> None:
        """Rank 0 writes."""

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Rank 0 writes."""

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rank 0 writes."""

    def write_json(self, name: str, data: Any) -> None:
        """Rank 0 writes."""

    def __exit__(self, *_: object) -> None:
        """Nothing to close."""


def progress_enabled(quiet: bool) -> bool:
    """A progress bar is shown only on a terminal and without --quiet."""
    return not quiet and sys.stderr.isatty()
