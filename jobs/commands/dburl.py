"""azamrecon db-url: a DATABASE_URL with its password percent-encoded."""

from __future__ import annotations

import sys
from urllib.parse import quote

import click

from pipeline.errors import InputError

# alphanumeric, so SQLAlchemy renders it as it is and it can be replaced by the encoded password
_PLACEHOLDER = "AZAMRECONPASSWORDPLACEHOLDER"


def url_with_password(url: str, password: str) -> str:
    """`url` (without a password) with `password` percent-encoded (every reserved character: `@ : / % # ?`
    would otherwise end the user part, the host or the path); InputError on a URL that is not one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # the message would quote the URL
        raise InputError("not a database URL: give driver://user@host:port/database, without a password") from None
    if parsed.password is not None:
        raise InputError("the URL already holds a password: give it without one and type the password when asked")
    if not parsed.username:
        raise InputError("the URL names no user: give driver://user@host:port/database")
    if not password:
        raise InputError("empty password")
    rendered = parsed.set(password=_PLACEHOLDER).render_as_string(hide_password=False)
    return rendered.replace(_PLACEHOLDER, quote(password, safe=""), 1)


@click.command("db-url")
@click.argument("url")
def db_url(url: str) -> None:
    """Print URL (given without its password) with the password percent-encoded, for DATABASE_URL.

    The password is asked without echo; when stdin is not a terminal, its first line is read.
    Example: azamrecon db-url mysql+pymysql://azamrecon@127.0.0.1:3306/azamrecon"""
    url_with_password(url, "x")  # a bad URL is refused before the password is asked
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, err=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    click.echo(url_with_password(url, password))
