"""Run the relay's CLI commands (``relay``, ``events replay``) as a child process.

The tests start this script rather than ``.venv/bin/walletd`` so that they exercise
exactly :func:`walletd.entrypoints.cli_relay.register`; arguments are the CLI's.
"""

from __future__ import annotations

import typer

from walletd.entrypoints import cli_relay


def main() -> None:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    cli_relay.register(app)
    app()


if __name__ == "__main__":
    main()
