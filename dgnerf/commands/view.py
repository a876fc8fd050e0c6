"""`dgnerf view CHECKPOINT [--data DATASET]`: the interactive viewer in the browser, with live driving from a
webcam (docs/viewer.md)."""
from __future__ import annotations

import asyncio
import os
import sys

import torch

from dgnerf.apps.viewer.live import live_available
from dgnerf.apps.viewer.server import ViewerServer, is_loopback
from dgnerf.apps.viewer.session import ViewerSession
from dgnerf.commands._common import load_model
from dgnerf.errors import DgnerfError


def run(args):
    if not 0 <= args.port <= 65535:
        raise DgnerfError(f"--port: expected 0..65535 (0 = any free port), got {args.port}")
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise DgnerfError(f"--host {args.host}: not a loopback address; the viewer has no login, so serving it to "
                              "other machines needs --allow-remote (anyone who reaches the port can use it)")
        print(f"dgnerf view: WARNING: serving on {args.host}: anyone who can reach this port can drive this viewer "
              "(render, upload code files, send webcam frames). There is no login and no TLS.", file=sys.stderr)
    if not 1 <= args.components <= 64:
        raise DgnerfError(f"--components: expected 1..64, got {args.components}")
    if args.threads is not None:
        if not 1 <= args.threads <= 1024:  # torch.set_num_threads overflows (unnamed) past a C int
            raise DgnerfError(f"--threads: expected 1..1024, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.data is not None and not os.path.isfile(os.path.join(args.data, "manifest.json")):
        raise DgnerfError(f"--data {args.data}: not a dataset directory (no manifest.json; see docs/dataset.md)")
    model = load_model(args.checkpoint, args.device, flag="CHECKPOINT")
    device = next(model.parameters()).device
    fs = model.cfg.feature_size
    if args.preview_size is not None and not 1 <= args.preview_size <= fs:
        raise DgnerfError(f"--preview-size: expected 1..{fs} (the checkpoint's feature map), got {args.preview_size}")
    session = ViewerSession(model, device, dataset=args.data, code_files=args.identity or (),
                            components=args.components, preview_size=args.preview_size)
    if args.no_live:
        live = (False, "started with --no-live", None)
    else:
        ok, why = live_available()
        live = (ok, why, session.expression_basis)
        if not ok:
            print(f"dgnerf view: {why}", file=sys.stderr)
    server = ViewerServer(session, args.host, args.port, live=live)
    server.warmup()

    async def main():
        task = asyncio.create_task(server.serve_forever())
        while server.bound_port is None and not task.done():
            await asyncio.sleep(0.05)
        if not task.done():
            print(f"dgnerf view: {server.url} (device {device}; Ctrl-C stops)", flush=True)
        await task

    try:
        asyncio.run(main())
    except OSError as e:
        raise DgnerfError(f"--port {args.port}: cannot serve on {args.host} ({e.strerror or e})") from None
    return 0


def register(sub):
    p = sub.add_parser("view", help="interactive viewer in the browser (orbit, identities, expressions, webcam driving)",
                       description="Serve a local web page that renders the head live: orbit/zoom with the mouse, "
                                   "slide between people and along expression components, drive it with a webcam.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="head checkpoint (.safetensors or a run directory's checkpoint)")
    p.add_argument("--data", metavar="DATASET", help="dataset whose persons, expression components and recorded "
                                                     "sequences the page offers (and whose basis webcam expressions use)")
    p.add_argument("--identity", metavar="CODE", action="append",
                   help="an identity code file to offer in the page (repeatable)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything else needs --allow-remote)")
    p.add_argument("--port", type=int, default=8008, help="port (default 8008; 0 = any free port)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (no login, no TLS: anyone who reaches the port can use it)")
    p.add_argument("--components", type=int, default=8, help="expression sliders (principal components, default 8)")
    p.add_argument("--preview-size", type=int, default=None, metavar="F",
                   help="feature map size of the preview frames while dragging (default: half the checkpoint's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-live", action="store_true", help="turn webcam driving off")
    p.set_defaults(func=run)
