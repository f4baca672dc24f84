"""`make bench`: end-to-end latency, then the worker at saturation; one JSON object last."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench import e2e
from bench.harness import emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--duration", type=float, default=30.0)
    args = p.parse_args()
    figures = e2e.run(args.rate, args.duration)
    # The worker benchmark in its own process: a fresh interpreter, as an operator would run it.
    out = subprocess.run([sys.executable, "-m", "bench.worker_throughput"], capture_output=True, text=True,
                         check=True)
    figures.update(json.loads(out.stdout.strip().splitlines()[-1]))
    emit(figures)


if __name__ == "__main__":
    main()
