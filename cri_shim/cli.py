"""Command line: ``cri-shim [flags]`` runs the daemon; subcommands do offline work.

Exit status: 0 on a clean stop, 1 when start-up fails (socket in use, root locked, corrupt
state), 2 for usage and configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cri_shim import __version__
from cri_shim.config import DEFAULT_CONFIG_PATH, LOG_LEVELS, Config, ConfigError, load

log = logging.getLogger("cri_shim")

#: Subcommand registrars: each adds its parser and sets ``func`` (image, config, ...).
SubcommandRegistrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help=f"TOML config file (default {DEFAULT_CONFIG_PATH}; "
                   "a missing default file means built-in defaults)")
    p.add_argument("--address", type=str, default=None, help="unix socket of the CRI server (config: address)")
    p.add_argument("--root", type=str, default=None, help="durable data directory (config: root)")
    p.add_argument("--state", type=str, default=None, help="volatile state directory (config: state)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="log level (config: log_level)")


def build_parser(registrars: Sequence[SubcommandRegistrar] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cri-shim",
        description="A Kubernetes container runtime (CRI v1). Without a subcommand, runs the daemon.",
    )
    parser.add_argument("--version", action="version", version=f"cri-shim {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cfg = sub.add_parser("config", help="print the effective configuration or a commented example")
    cfg.add_argument(
        "what", choices=["show", "example"], help="show: effective config as TOML; example: documented defaults"
    )
    cfg.set_defaults(func=_config_command)
    for register in registrars:
        register(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {"address": args.address, "root": args.root, "state": args.state, "log_level": args.log_level}
    return load(args.config, overrides)


def _config_command(args: argparse.Namespace, config: Config) -> int:
    from cri_shim.config_doc import effective_toml, example_toml

    sys.stdout.write(example_toml() if args.what == "example" else effective_toml(config))
    return 0


def _run_daemon(config: Config) -> int:
    from cri_shim import logs
    from cri_shim.daemon import Daemon, StartupError

    logs.setup(config.log_level)
    try:
        return asyncio.run(Daemon(config).run())
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        print(f"cri-shim: {exc}", file=sys.stderr)
        return 1


def _registrars() -> list[SubcommandRegistrar]:
    """Subcommands of other areas, imported lazily so the daemon path stays light."""
    import importlib
    import importlib.util

    out: list[SubcommandRegistrar] = []
    for module in ("cri_shim.image_cli",):
        if importlib.util.find_spec(module) is not None:
            out.append(importlib.import_module(module).register)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_registrars())
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"cri-shim: configuration error: {exc}", file=sys.stderr)
        return 2
    func = getattr(args, "func", None)
    if func is None:
        return _run_daemon(config)
    result: int = func(args, config)
    return result


if __name__ == "__main__":
    sys.exit(main())
