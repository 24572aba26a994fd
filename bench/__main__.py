"""The whole benchmark suite in one command: `python -m bench [--quick] [--out DIR]`.

Runs, each in its own process so they do not disturb each other:
training throughput, bare and on the real path (`train_throughput.py`), one seeded run's
whole process against the reference's `quanta.py` (`whole_process.py`, given the
reference's git directory with `--reference-dir` or `$QUANTA_REFERENCE_GIT_DIR`), the
small study through the service (`study_wall_time.py`), API latency under load
(`api_latency.py`) and POST-to-start latency per broker (`post_to_start.py`). Writes one
JSON file per part and `bench.json` with all of them under `--out` (default
`bench/results/`), and prints them.
`--quick` shrinks every part (a narrow network, fewer samples, a shorter load) to check
that the suite works in a few minutes; its numbers are not the documented ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["throughput", "whole_process", "study", "api",
                                 "post_to_start", "store"])
    parser.add_argument("--reference-dir", default=None,
                        help="git directory of RomainOr/Quanta, for whole_process "
                        "(default: $QUANTA_REFERENCE_GIT_DIR; without it that part is skipped)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    parts = {
        "throughput": ["train_throughput.py", "--layers", "0", "3", "6", "all"]
        + (["--samples", "256", "--width_multiplier", "0.25"] if quick else []),
        "whole_process": ["whole_process.py"]
        + (["--samples", "64", "--epochs", "1", "--pairs", "1"] if quick else [])
        + (["--reference-dir", args.reference_dir] if args.reference_dir else []),
        "study": ["study_wall_time.py"]
        + (["--layers", "2", "--runs", "1", "--samples", "128", "--width_multiplier", "0.125"]
           if quick else [])
        + (["--reference-dir", args.reference_dir] if args.reference_dir else []),
        "api": ["api_latency.py"] + (["--seconds", "5", "--jobs", "100"] if quick else []),
        "post_to_start": ["post_to_start.py"] + (["--jobs", "5"] if quick else []),
        "store": ["store_throughput.py"] + (["--mib", "32", "--pairs", "1"] if quick else []),
    }
    results = {}
    for name, command in parts.items():
        if name in args.skip:
            continue
        path = out / f"{name}.json"
        print(f"== {name}: {' '.join(command)}", flush=True)
        subprocess.run([sys.executable, str(HERE / command[0]), *command[1:], "--json",
                        str(path)], check=True)
        results[name] = json.loads(path.read_text())
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    print(f"\nAll results in {out / 'bench.json'}")


if __name__ == "__main__":
    main()
