"""The ``dask-lambda`` command line."""

from __future__ import annotations

import shlex
import signal
import threading

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dask-lambda")
def main() -> None:
    """Run Dask on AWS Lambda, or on the embedded local Lambda."""


@main.command()
@click.option(
    "--port", default=4566, show_default=True, help="Port on 127.0.0.1 (0: any free port)."
)
@click.option(
    "--concurrency-limit",
    default=1000,
    show_default=True,
    help="Concurrent executions allowed across all functions (Lambda's account limit).",
)
@click.option(
    "--idle-timeout",
    default=300.0,
    show_default=True,
    help="Seconds a warm runtime is kept before it is reaped.",
)
def local(port: int, concurrency_limit: int, idle_timeout: float) -> None:
    """Run the embedded local Lambda (Lambda, S3, IAM) in the foreground.

    Prints the endpoint and the `export` lines that point boto3, the AWS CLI and dask-lambda at
    it. Stop it with Ctrl-C.
    """
    try:
        from .local.server import LocalLambdaServer
    except ImportError as e:
        raise click.ClickException(
            "The embedded local Lambda needs the 'local' extra:"
            f" pip install 'dask-lambda[local]' ({e})"
        )
    try:
        server = LocalLambdaServer(
            port=port, concurrency_limit=concurrency_limit, idle_timeout=idle_timeout
        ).start()
    except OSError as e:
        raise click.ClickException(f"Cannot listen on 127.0.0.1:{port} ({e}); pick another --port")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"Embedded local Lambda listening on {server.endpoint_url}")
    click.echo("Point boto3 and dask-lambda at it with:")
    for name, value in server.service_env().items():
        click.echo(f"export {name}={shlex.quote(value)}")
    click.echo("Press Ctrl-C to stop.", err=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
        click.echo("Stopped.", err=True)


if __name__ == "__main__":
    main()
