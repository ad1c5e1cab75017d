"""Long fault-injection run: SIGKILL a tiny PPD training run many times (the first kill inside a checkpoint
write, the others at random moments), resume with ``--resume latest`` each time, and compare the final
adapter with an uninterrupted run's.

    HF_HUB_OFFLINE=1 python scripts/fault_inject.py --kills 10 --steps 12 --seed 0

Prints kills survived, resumes, and whether the final weights equal (max abs difference).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(TESTS))
    import test_train_faults as faults  # the kill/resume loop shared with the default-run test
    from ppd_fixtures import make_assets

    faults.STEPS = args.steps
    root = Path(tempfile.mkdtemp(prefix="pixpref-faults-"))
    assets = make_assets(root / "assets")
    clean, faulty = root / "clean", root / "faulty"
    res = subprocess.run(faults._cmd(assets, clean, resume=False), env=faults.ENV, cwd=faults.REPO,
                         capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stderr[-3000:])
        return 1
    stats = faults.run_with_kills(assets, faulty, kills=args.kills, seed=args.seed)
    a, b = faults._adapter(clean), faults._adapter(faulty)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else float("inf")
    leftovers = [p.name for p in (faulty / "checkpoints").glob(".tmp_*")]
    report = {**stats, "steps": args.steps, "final_weights_equal": diff <= 1e-6, "max_abs_diff": diff,
              "half_written_checkpoints_left": leftovers}
    print(json.dumps(report, indent=2))
    return 0 if report["final_weights_equal"] and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
