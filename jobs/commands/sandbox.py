"""`azamrecon sandbox`: run the local AzamPay simulator in the foreground."""

from __future__ import annotations

import click

from jobs.commands.common import pass_context
from pipeline.errors import InputError
from sandbox.outcomes import OUTCOMES
from sandbox.settings import DEFAULT_API_KEY, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, SandboxSettings


def _parse_outcomes(values: tuple[str, ...]) -> dict[str, str]:
    rules: dict[str, str] = {}
    for value in values:
        msisdn, sep, outcome = value.partition("=")
        if not sep or not msisdn.strip() or outcome.strip() not in OUTCOMES:
            raise InputError(f"--outcome {value!r}: expected MSISDN=OUTCOME with OUTCOME one of {', '.join(OUTCOMES)}")
        rules[msisdn.strip()] = outcome.strip()
    return rules


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8100,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--callback-url", default=None, help="Where callbacks are POSTed after each checkout; none are sent without it."
)
@click.option("--webhook-password", default=None, help="Sent in the callback's 'password' field (null without it).")
@click.option("--client-id", default=DEFAULT_CLIENT_ID, show_default=True, help="clientId accepted by GenerateToken.")
@click.option(
    "--client-secret", default=DEFAULT_CLIENT_SECRET, show_default=True, help="clientSecret accepted by GenerateToken."
)
@click.option(
    "--api-key", default=DEFAULT_API_KEY, show_default=True, help="X-API-KEY required on checkout, partners and status."
)
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    metavar="MSISDN=OUTCOME",
    help=f"Scripted outcome for checkouts from MSISDN (repeatable). OUTCOME: {', '.join(OUTCOMES)}.",
)
@click.option(
    "--default-outcome",
    default="success",
    show_default=True,
    type=click.Choice(OUTCOMES),
    help="Outcome for every other MSISDN.",
)
@click.option(
    "--latency",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds added before every AzamPay answer.",
)
@click.option(
    "--delay-seconds",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Callback delay of the 'delayed' outcome.",
)
@click.option(
    "--token-ttl",
    default=3600,
    show_default=True,
    type=click.IntRange(1),
    help="Lifetime of issued tokens, in seconds.",
)
@pass_context
def sandbox(
    ctx,
    host,
    port,
    callback_url,
    webhook_password,
    client_id,
    client_secret,
    api_key,
    outcomes,
    default_outcome,
    latency,
    delay_seconds,
    token_ttl,
) -> None:
    """Run a local AzamPay simulator (token, checkout, partners, status, callbacks) until Ctrl-C or SIGTERM.

    The status path and parameter names come from the config's azampay.status, so the client and the
    sandbox always agree. Control endpoints live under /_sandbox/ (see sandbox/server.py).
    """
    from sandbox.server import run_sandbox

    status = ctx.config.azampay.status
    settings = SandboxSettings(
        client_id=client_id,
        client_secret=client_secret,
        api_key=api_key,
        callback_url=callback_url,
        webhook_password=webhook_password,
        outcomes=_parse_outcomes(outcomes),
        default_outcome=default_outcome,
        latency=latency,
        delay_seconds=delay_seconds,
        token_ttl_seconds=token_ttl,
        status_path=status.path,
        reference_param=status.reference_param,
        provider_param=status.provider_param,
    )

    def ready(server) -> None:
        click.echo(f"AzamPay sandbox listening on {server.url} (use it as azampay.auth_url and azampay.checkout_url)")
        click.echo(f"callbacks: {callback_url or 'off'}; Ctrl-C to stop")

    try:
        run_sandbox(settings, host, port, on_ready=ready)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    click.echo("sandbox stopped")
