"""User-facing errors: each one is printed as a single line and exits with code 2."""

from __future__ import annotations


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
