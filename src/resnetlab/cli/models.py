"""`resnetlab models`."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand to ``sub``."""
    p = sub.add_parser("models", help="list models with parameters and multiply-adds")
    p.add_argument("--family", help="only this family (imagenet, cifar, plain, preact, ...)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--compare-paper",
        action="store_true",
        help="params and multiply-adds next to the figures He et al. 2015 published",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Run the subcommand with parsed ``args``."""
    if args.compare_paper:
        _compare_paper(args)
        return
    from resnetlab.models.complexity import model_table

    rows = model_table(args.family)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'model':<20} {'family':<9} {'params':>12} {'mult-adds':>10}  input")
    for r in rows:
        print(
            f"{r['name']:<20} {r['family']:<9} {r['params']:>12,} {r['macs_human']:>10}  "
            f"{'x'.join(map(str, r['input_shape']))}"
        )


def _compare_paper(args: argparse.Namespace) -> None:
    """Print (or, with --json, dump) our counts next to the paper's, with the differences."""
    from resnetlab.experiments.paper import compare_with_paper, format_comparison

    rows = compare_with_paper(args.family)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
        return
    print(format_comparison(rows))
