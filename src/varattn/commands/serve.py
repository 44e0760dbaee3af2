"""``varattn serve RUN [RUN ...]``: the alignment explorer in the browser (needs the ``serve`` extra).

It loads every run once, then serves the page and its JSON API (``varattn.serve.app``) with uvicorn, on
127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging

from varattn.errors import VarattnError

log = logging.getLogger("varattn")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def register(sub) -> None:
    from varattn.serve.limits import Limits

    d = Limits()
    p = sub.add_parser("serve", help="explore alignments in the browser: translate, align, answer (local web app)",
                       description="Serve an explorer of one or more trained runs (translation or VQA) at "
                                   "http://127.0.0.1:PORT/: translations with the prior, q and exact posterior "
                                   "alignments, reference scoring, VQA answers and regions, two runs side by side; "
                                   "and its JSON API (docs/serve.md).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run directories written by varattn train")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). Another address exposes the "
                        "models to the network, without authentication: see docs/serve.md")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, help="torch threads for the models (default: torch's choice)")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help=f"longest sentence, in pieces, a request may give (default {d.max_tokens})")
    p.add_argument("--max-chars", type=int, default=d.max_chars,
                   help=f"longest sentence or question, in characters (default {d.max_chars})")
    p.add_argument("--max-upload-kb", type=int, default=d.max_upload_bytes // 1024,
                   help=f"largest request body, an uploaded image with its form (default {d.max_upload_bytes // 1024})")
    p.add_argument("--concurrency", type=int, default=d.concurrency,
                   help=f"requests computed at once (default {d.concurrency}); the others wait their turn")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"requests that may wait; one more gets 503 (default {d.max_queue})")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from varattn.extras import optional_import

    optional_import("starlette", "serve", "varattn serve")
    uvicorn = optional_import("uvicorn", "serve", "varattn serve")
    optional_import("multipart", "serve", "varattn serve (image uploads)")
    from varattn.serve.app import create_app
    from varattn.serve.explore import load_runs
    from varattn.serve.limits import Limits

    if not 0 < args.port < 65536:
        raise VarattnError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        limits = Limits(max_chars=args.max_chars, max_tokens=args.max_tokens,
                        max_upload_bytes=args.max_upload_kb * 1024, concurrency=args.concurrency,
                        max_queue=args.max_queue)
    except ValueError as exc:
        raise VarattnError(str(exc).replace("max_", "--max-").replace("_", "-")) from None
    if args.threads is not None:
        if args.threads < 1:
            raise VarattnError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    runs = load_runs(args.run_dirs, args.checkpoint, args.device)
    loopback = is_loopback(args.host)
    if not loopback:
        log.warning("warning: listening on %s exposes these models to every machine that can reach it, without "
                    "authentication or encryption; keep it on 127.0.0.1 unless you trust the network",
                    args.host)
    app = create_app(runs, limits, allowed_hosts=[*LOOPBACK_NAMES, args.host] if loopback else None)
    for r in runs:
        log.info("serving %s: %s run, mode %s", r.name, r.task, r.trained.mode)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    log.info("open http://%s:%d/ (Ctrl-C stops)", shown, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
