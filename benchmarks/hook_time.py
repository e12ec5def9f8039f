"""How long does `jaxcache hook` take when there is nothing to do? Against `python -c pass`.

Usage:
    python benchmarks/hook_time.py [--repeat 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import PYTHON, clean_env, median, print_table, timed_run, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    script = shutil.which("jaxcache", path=str(Path(PYTHON).parent)) or "jaxcache"
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env()
        hook = [script, "--cache-dir", tmp, "hook"]
        timed_run(hook, env)  # first run creates the folder and records the version
        baseline, hooked = [], []
        for _ in range(args.repeat):
            baseline.append(timed_run([PYTHON, "-c", "pass"], env)[0])
            hooked.append(timed_run(hook, env)[0])
    b, h = median(baseline), median(hooked)
    print(f"nothing to do; fresh process each; median of {args.repeat}")
    print_table(("command", "seconds"), [("python -c pass", b), ("jaxcache hook", h)])
    write_json(args.json, {"repeat": args.repeat, "python_pass_s": baseline, "hook_s": hooked,
                           "python_pass_median_s": b, "hook_median_s": h})
    return 0


if __name__ == "__main__":
    sys.exit(main())
