"""`dgnerf info`: versions, which kernels are built, the CUDA arch list and the CPU's vector ISA, as JSON."""
import json

from dgnerf import _ext


def register(sub):
    p = sub.add_parser("info", help="print versions and what the extension was built with (JSON)")
    p.set_defaults(func=run)


def run(args):
    print(json.dumps(_ext.info(), indent=2))
