"""Run every benchmark script in turn (``make bench``); each prints its own figures.

The scripts start their own embedded services on free ports, so they run one
after another (two cores: running them side by side would measure each other).
Extra arguments name the benchmarks to run, e.g. ``bench/run_all.py ingest reports``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ("producer", "ingest", "reports", "orchestration", "dashboard")


def main(argv: list[str]) -> int:
    names = argv or list(ORDER)
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ORDER)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"=== bench_{name}.py", flush=True)
        if subprocess.run([sys.executable, str(BENCH / f"bench_{name}.py")], cwd=BENCH.parent).returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
