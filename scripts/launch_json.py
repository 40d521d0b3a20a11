"""What the table scripts share: run one `launch.py` command in a subprocess and read the JSON
line every command ends with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(args: list[str], overrides: list[str], threads: int) -> dict:
    """`launch.py *args --set o ...` with `threads` torch threads; its final JSON line, or
    {"error": [last line it printed]}."""
    command = [sys.executable, str(ROOT / "launch.py"), *args]
    for item in overrides:
        command += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])
