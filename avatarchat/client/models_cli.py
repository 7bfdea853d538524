"""`avatar-chat models`: list the production models and fetch their weights (avatarchat/models.py).

    avatar-chat models list
    avatar-chat models fetch sensevoice-small [--hub modelscope|huggingface] [--dir PATH]
"""

from __future__ import annotations

import sys

from avatarchat import models


def cmd_list(args) -> int:
    root = models.models_dir()
    print(f"models directory: {root}  (set AVATAR_CHAT_MODELS to move it)")
    for name, spec in sorted(models.CATALOG.items()):
        here = "fetched" if (root / name).is_dir() and any((root / name).iterdir()) else "-"
        mirror = f", also {spec.mirror[0]}:{spec.mirror[1]}" if spec.mirror else ""
        print(f"  {name:26s} {here:8s} {spec.backend:22s} {spec.hub}:{spec.repo}{mirror}")
    return 0


def cmd_fetch(args) -> int:
    try:
        where = models.fetch(args.name, dest=args.dir, hub=args.hub)
    except models.FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a hub's own error (network, auth), said plainly
        print(f"error: fetching {args.name} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(where)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list production models; fetch their weights")
    msub = p.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="the models backends can use, and which are fetched").set_defaults(func=cmd_list)
    f = msub.add_parser("fetch", help="download a model's weights into the models directory")
    f.add_argument("name", choices=sorted(models.CATALOG), metavar="NAME",
                   help=f"one of: {', '.join(sorted(models.CATALOG))}")
    f.add_argument("--hub", choices=["modelscope", "huggingface"], default=None,
                   help="where to download from (default: where the model lives; some are mirrored)")
    f.add_argument("--dir", default=None, help="download here instead of the models directory")
    f.set_defaults(func=cmd_fetch)
