#!/usr/bin/env python
"""CoBra sweep system. `python launch.py --help` lists the commands."""

import sys
from pathlib import Path

# Runnable from any working directory, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cobra.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
