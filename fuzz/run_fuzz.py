"""A longer seeded mutation campaign than tests/test_mutations.py: `make fuzz`.

    python fuzz/run_fuzz.py [--cases 3000] [--seed 7] [--workers 2]

Prints counts by outcome (ok / refused / problem) and the first problems found.
Exit code 1 if any case crashed, hung, printed a traceback, "internal error" or more
than one line on stderr.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_mutations import make_cases, outcome, problems, run_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    start = time.monotonic()
    counts: collections.Counter = collections.Counter()
    found: list[str] = []
    with tempfile.TemporaryDirectory() as directory:
        for batch_seed in range(args.seed, args.seed + (args.cases + 499) // 500):
            count = min(500, args.cases - sum(counts.values()))
            batch_dir = Path(directory) / str(batch_seed)
            batch_dir.mkdir()
            results = run_cases(make_cases(count, batch_seed, batch_dir), args.workers)
            counts.update(outcome(r) for r in results)
            found += problems(results)
            for path in batch_dir.iterdir():
                path.unlink()
    print(f"{sum(counts.values())} cases in {time.monotonic() - start:.0f} s")
    for name, number in sorted(counts.items()):
        print(f"  {name}: {number}")
    for line in found[:20]:
        print("PROBLEM", line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
