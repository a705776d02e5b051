"""Run the IHC differential on panels taken from published cases (docs/ihc_literature_cases.csv:
the panel as the paper wrote it, with its citation) and report top-1 / top-3 accuracy,
indeterminate calls, and confident wrong calls, under the default prior, IHC alone. Results
read from fragments with words the parser could not place are listed as "check" lines, for a
person to confirm the reading.

    python scripts/validate_ihc.py [--prior NAME] [--csv PATH]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.core.errors import FascicleError  # noqa: E402
from pipeline.ihc.knowledge import load_knowledge  # noqa: E402
from pipeline.ihc.panel import parse_panel  # noqa: E402
from pipeline.prediction.call import CallConfig, make_call  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", type=Path, default=ROOT / "docs" / "ihc_literature_cases.csv")
    p.add_argument("--prior", default=None)
    p.add_argument("--knowledge", type=Path, default=None, help="knowledge base YAML to try")
    args = p.parse_args()
    kb, config = load_knowledge(args.knowledge), CallConfig.load()
    prior = args.prior or kb.default_prior
    with open(args.csv, newline="") as fh:
        cases = list(csv.DictReader(fh))
    top1 = top3 = confident_wrong = indeterminate = unsettled = errors = 0
    for case in cases:
        try:
            panel = parse_panel(case["panel"], kb)
            made = make_call(kb, config, panel, None, prior)
        except FascicleError as err:
            errors += 1
            print(f"{case['case_id']:<22} PARSE ERROR {err}")
            continue
        ranked = [e for e, _ in made.differential.ranked()]
        call, expected = made.call, case["expected"]
        top1 += ranked[0] == expected
        top3 += expected in ranked[:3]
        indeterminate += call.indeterminate
        settled = not call.entity_note  # a class called with its entity left open
        unsettled += not call.indeterminate and not settled
        wrong = not call.indeterminate and settled and call.entity != expected
        confident_wrong += wrong
        status = "INDETERMINATE" if call.indeterminate else ("WRONG" if wrong else "ok")
        status += "" if settled or call.indeterminate else " (entity open)"
        print(
            f"{case['case_id']:<22} expected {expected:<26} top {ranked[0]:<26} "
            f"({made.differential.posterior.max():.2f}) rank {ranked.index(expected) + 1:>2} "
            f"{status:<27} {panel.usage()}"
        )
        for r in panel.performed.values():  # words of a result that were not read: check them
            for note in (q for q in r.qualifiers if q.startswith("unread: ")):
                print(f"{'':<24}check: {r.marker} read {r.state} from {r.raw!r} ({note})")
    n = len(cases)
    print(
        f"\n{n} cases, prior {prior}: top-1 {top1}/{n} ({top1 / n:.0%}), top-3 {top3}/{n} "
        f"({top3 / n:.0%}), indeterminate {indeterminate}, class called with the entity left "
        f"open {unsettled}, confident wrong {confident_wrong}, unreadable {errors}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
