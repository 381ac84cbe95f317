#!/usr/bin/env python3
"""Speed benchmark of slkd's SLD: the command line of the ``speed`` package
beside this file (``benchmarks/speed/``, whose docstring lists the sections).

    python benchmarks/sld_speed.py [--device cpu|cuda] [--quick] [--only loss,step,...]
                                   [--iters N] [--warmup N] [--out FILE.json] [--md FILE.md]
"""

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed.cli import main  # noqa: E402  (after the path it is found on)

if __name__ == "__main__":
    # a time limit's SIGTERM (timeout(1)) unwinds like Ctrl-C: temporary run folders are removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
