"""``flask traffic dashboard-password``: make the hash the dashboard's login checks."""

from __future__ import annotations

import sys

import click
from werkzeug.security import generate_password_hash

from ._auth import PASSWORD_CONFIG_KEY

__all__ = ["MIN_PASSWORD_LENGTH", "dashboard_password_command"]

#: The shortest password the command takes.
MIN_PASSWORD_LENGTH = 8


@click.command("dashboard-password")
def dashboard_password_command() -> None:
    """Print a password hash for the traffic dashboard's login.

    Asks for the password twice, or reads one line from standard input when
    that is not a terminal. The hash goes to standard output, alone, so it
    can be piped; where to put it goes to standard error.
    """
    if sys.stdin is not None and sys.stdin.isatty():
        password = click.prompt(
            "Dashboard password", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        password = click.get_text_stream("stdin").readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise click.UsageError(f"Use a password of at least {MIN_PASSWORD_LENGTH} characters.")
    click.echo(generate_password_hash(password))
    click.echo(
        f"Set the app's config key {PASSWORD_CONFIG_KEY} to the line above (for example "
        f"through the environment variable FLASK_{PASSWORD_CONFIG_KEY} and "
        f"app.config.from_prefixed_env()); log in with any user name and this password.",
        err=True,
    )
