"""How both command lines report bad input: one line, `error: ...`, exit status 2.

click prints a usage error as three lines (usage, a help hint, the error); a user who mistypes an
option wants the one line that names the problem. `OneLineErrors` is the click group class both
`pico-train` and `pico-analyze` use; commands report their own errors the same way.
"""

from __future__ import annotations

import sys

import click


class OneLineErrors(click.Group):
    """A click group whose usage and command errors print as `error: MESSAGE` (one line)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # called from Python: let the caller see the exceptions
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as err:
            message = " ".join(err.format_message().split())
            click.echo(f"error: {message}", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


__all__ = ["OneLineErrors"]
