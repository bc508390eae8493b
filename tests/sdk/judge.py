"""Runs several judges in one container, one after the other, in one process (the SDKs
are imported once): `python judge.py '<JSON list of {"judge", "mode", "expect"}>'`.

Prints one JSON line per judge, {"judge", "mode", "ok", ...results} or {..., "ok": false,
"error": "..."}, and exits 1 if any judge failed. Every judge runs even after a failure,
so that one run shows every verdict.
"""

import importlib
import json
import sys
import time
import traceback

from common import Failure, check_environment

JUDGES = {"gce": "gce_judge", "azure": "azure_judge", "aws": "aws_judge", "sts": "sts_judge", "iam": "iam_judge"}
# Modes a judge may offer; a plan naming another is a mistake in the plan.
MODES = ("serve", "refuse", "absent", "assumed", "none", "held", "impersonated", "denied", "no_v2", "assumed_v1")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: %s '<JSON list of {judge, mode, expect}>'" % sys.argv[0])
    plan = json.loads(sys.argv[1])
    failed = False
    try:
        check_environment()
    except Failure as e:
        print(json.dumps({"judge": "environment", "ok": False, "error": str(e)}), flush=True)
        sys.exit(1)
    for step in plan:
        line = {"judge": step["judge"], "mode": step["mode"]}
        started = time.monotonic()
        try:
            module = importlib.import_module(JUDGES[step["judge"]])
            if step["mode"] not in MODES or not hasattr(module, step["mode"]):
                raise Failure("%s has no judge %r" % (JUDGES[step["judge"]], step["mode"]))
            run = getattr(module, step["mode"])
            line.update(run(step["expect"]))
            line["ok"] = True
        except Failure as e:
            line.update(ok=False, error=str(e))
        except Exception as e:  # noqa: BLE001 - an SDK failing in any way is a verdict
            where = traceback.extract_tb(e.__traceback__)[-1]
            line.update(
                ok=False,
                error="%s: %s (at %s:%d)" % (type(e).__name__, e, where.filename, where.lineno),
            )
        line["secs"] = round(time.monotonic() - started, 2)
        failed = failed or not line["ok"]
        print(json.dumps(line, sort_keys=True), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
