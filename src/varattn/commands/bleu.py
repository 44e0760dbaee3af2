"""``varattn bleu``: corpus BLEU of a hypothesis file, tokenized-lowercased and detokenized sacreBLEU."""

from __future__ import annotations

import argparse
import json

from varattn.commands.common import input_lines


def register(sub) -> None:
    p = sub.add_parser("bleu", help="corpus BLEU: tokenized-lowercased and detokenized sacreBLEU")
    p.add_argument("--ref", required=True, help="reference file, one sentence per line")
    p.add_argument("--hyp", help="hypothesis file (default: stdin)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from varattn.nmt.bleu import format_bleu, quiet_bleu
    from varattn.nmt.corpora.corpus import read_lines

    refs = read_lines(args.ref)
    result = quiet_bleu(list(input_lines(args.hyp)), refs)
    print(json.dumps(result) if args.json else format_bleu(result))
    return 0
