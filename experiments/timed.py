"""Run a command and record its wall seconds: `timed.py TIMES.json -- CMD ...`.

The experiment's Makefile wraps every stage in it, so `collect.py` can report the time of each
stage. A resumed stage adds its seconds to the earlier attempts' (the file keeps a list).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: timed.py TIMES.json -- CMD ...", file=sys.stderr)
        return 2
    record, command = Path(argv[0]), argv[2:]
    start = time.time()
    code = subprocess.call(command)
    attempts = json.loads(record.read_text())["attempts"] if record.exists() else []
    attempts.append({"seconds": round(time.time() - start, 1), "exit": code,
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"command": command, "attempts": attempts}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
