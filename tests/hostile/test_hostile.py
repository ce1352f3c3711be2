"""Every hostile case, every command that applies: the exit code it must give, one line on
stderr when the input is refused before work starts, no traceback, inputs untouched, nothing
left behind on failure, no non-finite model written, bounded memory and time.

The cases run in ``tests.hostile.runner`` (one process that forks a child per command run:
see there why); this test reads its record of every run and asserts on all of them at once,
so a failure lists every run that broke a rule.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter

from tests.conftest import ROOT
from tests.hostile.cases import CLASSES
from tests.hostile.runner import TIME_LIMIT_S

MAX_RSS = 2 * 2**30
MIN_CASES = 150
# A raw control character on stderr: an unescaped name, or a terminal colour code.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


def problems(record: dict) -> list[str]:
    """Every rule the run broke."""
    found = []
    code, out, err = record["code"], record["stdout"], record["stderr"]
    if record["timed_out"]:
        found.append(f"ran past {TIME_LIMIT_S} s")
    elif code not in record["expect"]:
        found.append(f"exit {code}, expected {record['expect']}")
    if "Traceback" in out + err:
        found.append("printed a traceback")
    if record["early"] and code != 0:
        lines = err.splitlines()
        if len(lines) != 1 or out:
            found.append(f"{len(lines)} stderr lines and {len(out)} stdout bytes, not one line")
    if RAW_CONTROL.search(err):
        found.append("raw control characters on stderr")
    if record["changed"]:
        found.append(f"changed its inputs: {record['changed']}")
    left = [k for k in record["created"] if code != 0 or k not in record["writes"]]
    if left:
        found.append(f"left files behind: {left}")
    if code == 0 and sorted(record["written"]) != sorted(record["writes"]):
        found.append(f"wrote {record['written']}, expected {record['writes']}")
    if record["modes"]:
        found.append(f"file modes not from the umask: {record['modes']}")
    if record["non_finite"]:
        found.append(f"wrote non-finite weights: {record['non_finite']}")
    if record["peak_rss"] > MAX_RSS:
        found.append(f"peak memory {record['peak_rss'] / 2**30:.2f} GiB")
    return found


def test_hostile_inputs(tmp_path, capsys):
    results = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "MORPHCLI_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.hostile.runner", str(tmp_path / "cases"), str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(results.read_text())
    cases = {r["case"]: r["class"] for r in records}
    per_class = Counter(cases.values())
    runs = Counter(r["class"] for r in records)
    with capsys.disabled():
        print(
            f"\nhostile: {len(cases)} cases, {len(records)} runs, "
            f"{sum(r['seconds'] for r in records):.0f} s; per class (cases/runs): "
            + ", ".join(f"{k} {per_class[k]}/{runs[k]}" for k in CLASSES)
            + f"; peak memory {max(r['peak_rss'] for r in records) / 2**20:.0f} MiB"
        )
    assert len(cases) >= MIN_CASES
    assert set(per_class) == set(CLASSES)
    broken = [
        f"{r['case']}: morphnet {' '.join(r['argv'])!r}: {'; '.join(p)}\n    stderr: "
        f"{r['stderr'][-400:]!r}"
        for r in records
        if (p := problems(r))
    ]
    assert not broken, f"{len(broken)} of {len(records)} runs broke a rule:\n" + "\n".join(broken)
