"""User-facing errors: each one is printed as a single line and exits with code 2."""

import argparse
import sys


class CobraError(Exception):
    """A problem the user can fix; the message names it and says how."""


class ConfigError(CobraError):
    """A bad key, type or value in a config, sweep file or `--set` override."""


class DataError(CobraError):
    """A missing, incomplete or corrupt dataset."""


class StageInputError(CobraError):
    """A stage's input is missing or does not match; the message names the stage that makes it."""


class TrackingError(CobraError):
    """The experiment tracker cannot be reached or holds no usable run."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; raised (not sys.exit) so a sweep can fail just this trial."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Ray, SLURM, Kubernetes and `kill` send): handled as Ctrl+C is, so a run
    ends with its status record (KILLED) and stays resumable."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and still exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def one_line(exc: BaseException) -> str:
    """The message of an error, one line. An error raised in a DataLoader worker comes back with
    the worker's traceback in its message; its last line is the original message."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
