"""``cri-shim image import FILE`` and ``cri-shim image ls``: images on air-gapped nodes.

Both work on the node's store directly (``root``/meta.db and ``root``/images), with or
without the daemon running: SQLite serialises writers, and in-progress work is leased to
this process, so the daemon's clean-up leaves it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from cri_shim.config import Config
from runtime.errors import EngineError
from runtime.image.model import Image
from runtime.image.reference import familiar


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("image", help="import and list images without a registry")
    isub = p.add_subparsers(dest="image_command", metavar="IMAGE_COMMAND", required=True)
    imp = isub.add_parser("import", help="load a `docker save` tarball or an OCI image layout archive")
    imp.add_argument("file", type=Path, help="archive file (.tar, .tar.gz or .tar.zst)")
    imp.set_defaults(func=import_command)
    ls = isub.add_parser("ls", help="list images")
    ls.add_argument("-q", "--quiet", action="store_true", help="print image ids only")
    ls.add_argument("--digests", action="store_true", help="show repo digests")
    ls.set_defaults(func=ls_command)


async def _with_service(config: Config, fn: Any) -> Any:
    from runtime.engine import all_migrations
    from runtime.image.service import ImageService
    from runtime.store import Store

    store = Store(config.root / "meta.db", all_migrations())
    await store.aopen()
    service = ImageService(config.image, store, config.root / "images")
    try:
        await asyncio.to_thread(service.init)
        return await fn(service)
    finally:
        await service.close()
        await asyncio.to_thread(store.close)


def import_command(args: argparse.Namespace, config: Config) -> int:
    try:
        images: list[Image] = asyncio.run(_with_service(config, lambda s: s.import_archive(args.file.resolve())))
    except EngineError as exc:
        print(f"cri-shim image import: {exc}", file=sys.stderr)
        return 1
    for image in images:
        print(f"imported {', '.join(image.repo_tags) or '(untagged)'} {image.id}")
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.3g}{unit}" if unit != "B" else f"{size}B"
        value /= 1000
    return f"{size}B"


def ls_command(args: argparse.Namespace, config: Config) -> int:
    try:
        images: list[Image] = asyncio.run(_with_service(config, lambda s: s.list()))
    except EngineError as exc:
        print(f"cri-shim image ls: {exc}", file=sys.stderr)
        return 1
    if args.quiet:
        for image in images:
            print(image.id)
        return 0
    rows = [("IMAGE", "TAG", "DIGEST" if args.digests else "", "IMAGE ID", "SIZE")]
    for image in images:
        names = image.repo_tags or ("<none>:<none>",)
        digest = image.repo_digests[0].split("@", 1)[1][:19] if image.repo_digests else "<none>"
        for tag in names:
            repo, _, t = tag.rpartition(":")
            rows.append((familiar(repo) if repo != "<none>" else repo, t, digest if args.digests else "",
                         image.id[7:20], _human(image.size)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r) if widths[i]).rstrip())
    return 0
