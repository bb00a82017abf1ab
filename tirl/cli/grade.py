"""`tirl grade`: check an answer against a reference, or grade a JSONL file of responses.

Heavy imports (sympy, math-verify) happen inside the handler, so ``tirl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = r"""examples:
  tirl grade '2\sqrt{2}' '\sqrt{8}'                      # is a bare answer equal to the reference?
  tirl grade --response '<answer>\boxed{5}</answer>' 5   # extract the boxed answer first
  tirl grade --file samples.jsonl --out graded.jsonl     # fields: response, answer (see --*-field)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grade", help="check an answer against a reference, or grade a JSONL file",
        description="The training reward's judge: extract the final \\boxed{} answer and decide "
        "equivalence (exact fast path, then math-verify in worker processes with a time limit).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="PRED GOLD [KEY=VALUE ...]",
                   help="the answer (or, with --response, a whole response) and the reference, then "
                   "reward.* overrides, e.g. reward.timeout_s=5")
    p.add_argument("--response", action="store_true", help="PRED is a whole model response")
    p.add_argument("--file", help="a JSONL file of responses to grade")
    p.add_argument("--response-field", default="response", help="field with the response text")
    p.add_argument("--answer-field", default="answer", help="field with the reference answer")
    p.add_argument("--out", help="write one JSON grade per line here (with --file)")
    p.add_argument("--timeout", type=float, help="per-check limit in seconds (reward.timeout_s)")
    p.add_argument("--workers", type=int, help="worker processes (reward.workers; 0 = from the CPUs)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_grade)


def _grade(args: argparse.Namespace) -> int:
    from tirl.cli.common import print_config, split_items, sugar
    from tirl.config import load_config

    pos, ov = split_items(args.items)
    cfg = load_config(None, sugar([(args.timeout, "reward.timeout_s"), (args.workers, "reward.workers")]) + ov)
    if args.print_config:
        return print_config(cfg)
    args.reward = cfg.reward
    if args.file:
        return _grade_file(args)
    if len(pos) != 2:
        print("tirl grade: give PRED and GOLD, or --file FILE.jsonl (see tirl grade --help)",
              file=sys.stderr)
        return 2
    from tirl.reward.equivalence import grade

    pred, gold = pos
    text = pred if args.response else f"\\boxed{{{pred}}}"
    g = grade(text, gold, timeout_s=cfg.reward.timeout_s)
    print(json.dumps(g.to_dict(), ensure_ascii=False))
    return 0 if g.correct else 1


def _grade_file(args: argparse.Namespace) -> int:
    from collections import Counter

    from tirl.reward.grader import Grader

    from tirl.runs import iter_jsonl

    items = []
    try:
        rows = list(iter_jsonl(args.file))
    except (OSError, ValueError) as err:
        print(f"tirl grade: {err}", file=sys.stderr)
        return 2
    for n, row in rows:
        for key in (args.response_field, args.answer_field):
            if key not in row:
                print(f"tirl grade: line {n} of {args.file} has no field {key!r} (fields: "
                      f"{sorted(row)}); pick others with --response-field/--answer-field",
                      file=sys.stderr)
                return 2
        items.append((str(row[args.response_field]), str(row[args.answer_field])))
    with Grader(workers=args.reward.workers, timeout_s=args.reward.timeout_s) as grader:
        grades = grader.grade_batch_sync(items)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for g in grades:
                f.write(json.dumps(g.to_dict(), ensure_ascii=False) + "\n")
    counts = Counter(g.status for g in grades)
    summary = {"n": len(grades), **{s: counts.get(s, 0) for s in
                                    ("correct", "incorrect", "no_answer", "timeout")},
               "accuracy": round(counts.get("correct", 0) / max(1, len(grades)), 4)}
    print(json.dumps(summary))
    return 0
