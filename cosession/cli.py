"""`cosession`: one entry point, one module per command (imported only when it runs)."""

from __future__ import annotations

import argparse
import importlib
import sys

# command → (module, function that adds its arguments, function that runs it)
COMMANDS = {
    "serve": "cosession.serve",
    "loadtest": "cosession.loadtest",
    "audit": "cosession.audit",
    "join": "cosession.join",
    "admin": "cosession.admin",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cosession", description="Web remote access with joint sessions.")
    parser.add_argument("--config", metavar="FILE", help="a TOML file overriding config/default.toml")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        module.add_arguments(sub.add_parser(name, help=module.__doc__.strip().splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
