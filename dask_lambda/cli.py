"""The ``dask-lambda`` command line: a thin layer over :mod:`.build`, :mod:`.deploy`, :mod:`.admin`.

Every command that talks to AWS takes ``--profile``, ``--region`` and ``--endpoint-url``; with none
of them boto3's own chain applies, including the ``AWS_ENDPOINT_URL_*`` variables that
``dask-lambda local`` prints.
"""

from __future__ import annotations

import functools
import json
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from . import config, limits
from .function import contract

MEMORY_RANGE = f"{limits.MIN_MEMORY_MB}-{limits.MAX_MEMORY_MB}"
TIMEOUT_RANGE = f"1-{limits.MAX_TIMEOUT_SECONDS}"
EPHEMERAL_RANGE = f"{limits.MIN_EPHEMERAL_MB}-{limits.MAX_EPHEMERAL_MB}"

CLEAN_LISTED = 50  # object names `clean` lists before it asks

_AWS_OPTIONS = [
    click.option("--profile", help="AWS profile (default: boto3's chain)."),
    click.option("--region", help="AWS region (default: boto3's chain)."),
    click.option(
        "--endpoint-url",
        help="Lambda/S3/IAM endpoint, e.g. the embedded local Lambda's (default: AWS).",
    ),
]


def aws_command(function):
    """Add the AWS options and turn them into an ``aws`` argument; map errors to messages."""
    for option in reversed(_AWS_OPTIONS):
        function = option(function)

    @functools.wraps(function)
    def wrapper(profile, region, endpoint_url, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        from .aws import Aws
        from .deploy.admin import NotOursError
        from .deploy.build import BuildError
        from .deploy.functions import DeployError

        aws = Aws(profile=profile, region=region, endpoint_url=endpoint_url)
        try:
            return function(aws=aws, **kwargs)
        except (BuildError, DeployError, NotOursError, ValueError) as e:
            raise click.ClickException(str(e))
        except ClientError as e:
            error = e.response.get("Error", {})
            raise click.ClickException(f"{error.get('Code')}: {error.get('Message')}")
        except BotoCoreError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}")

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dask-lambda")
def main() -> None:
    """Run Dask on AWS Lambda, or on the embedded local Lambda.

    \b
    Typical session:
      dask-lambda deploy my-dask --create-role --bucket my-spill-bucket my_module.py
      python -c "...LambdaCluster(function_name='my-dask')..."
      dask-lambda logs my-dask --since 10m
      dask-lambda delete my-dask --delete-role
    """


# -- local ----------------------------------------------------------------------------------------
@main.command()
@click.option("--port", default=4566, show_default=True, help="Port on 127.0.0.1 (0: any).")
@click.option(
    "--concurrency-limit",
    default=1000,
    show_default=True,
    help="Concurrent executions across all functions (Lambda's account limit).",
)
@click.option(
    "--idle-timeout", default=300.0, show_default=True, help="Seconds a warm runtime is kept."
)
def local(port: int, concurrency_limit: int, idle_timeout: float) -> None:
    """Run the embedded local Lambda (Lambda, S3, IAM, Logs) in the foreground.

    Prints the endpoint and the `export` lines that point boto3, the AWS CLI and dask-lambda at
    it. Stop it with Ctrl-C.
    """
    try:
        from .emulator.server import LocalLambdaServer
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
    if server.runtimes.isolation_note:
        click.echo(
            f"Isolation is partial ({server.runtimes.isolation_note}): runtimes see this"
            " machine's files and processes, which they could not on AWS. Install bubblewrap"
            " (apt-get install bubblewrap) for a sandbox per runtime.",
            err=True,
        )
    click.echo("Point boto3 and dask-lambda at it with:")
    from .emulator.registry import standin_reference

    exports = {**server.service_env(server.admin),
               "DASK_LAMBDA__IMAGE__BASE": standin_reference(server.endpoint_url)}  # fmt: skip
    for name, value in exports.items():
        click.echo(f"export {name}={shlex.quote(value)}")
    click.echo("Press Ctrl-C to stop.", err=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
        click.echo("Stopped.", err=True)


# -- deploy / update ------------------------------------------------------------------------------
def _deploy_options(defaults: bool):
    """Options shared by deploy and update; update defaults to 'keep the current value'."""

    def default(name):
        return config.setting(name) if defaults else None

    options = [
        click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path)),
        click.option("--requirements", "-r", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="A pip requirements file to install into the package."),
        click.option("--include", multiple=True, metavar="PACKAGE",
                     help="Also package PACKAGE at this client's version, e.g. numpy. Repeatable."),
        click.option("--no-dependencies", is_flag=True,
                     help="Package dask_lambda and PATHS only; a layer must provide dask & co."),
        click.option("--memory", type=int, default=default("memory"),
                     show_default=defaults, help=f"Memory in MB ({MEMORY_RANGE})."),
        click.option("--timeout", type=int, default=default("timeout"),
                     show_default=defaults, help=f"Timeout in seconds ({TIMEOUT_RANGE})."),
        click.option("--ephemeral-storage", type=int, help=f"/tmp size in MB ({EPHEMERAL_RANGE})."),
        click.option("--architecture", type=click.Choice(["x86_64", "arm64"]),
                     default="x86_64" if defaults else None, show_default=defaults,
                     help="Instruction set; wheels are chosen to match."),
        click.option("--layers", multiple=True, metavar="ARN", help="Layer ARNs. Repeatable."),
        click.option("--role", metavar="ARN", help="Execution role the function runs as."),
        click.option("--create-role", is_flag=True,
                     help="Create a least-privilege role (spill prefix + own logs) and use it."),
        click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
                     help="Environment variable of the function. Repeatable."),
        click.option("--allow", multiple=True, metavar="MODULE.FUNCTION",
                     help="Run only these functions (MODULE.* for a whole module). Repeatable."),
        click.option("--bucket", default=default("bucket"),
                     help="Spill bucket the function uses (also stages zips over 50 MB)."),
        click.option("--prefix", default=None,
                     help="S3 prefix of spilled data (default: <lambda.prefix>/NAME, or the"
                          " function's own on update)."),
        click.option("--expire-days", type=int, default=1, show_default=True,
                     help="Lifecycle rule: spill objects a killed client left expire after this."),
        click.option("--s3-read", multiple=True, metavar="S3URL",
                     help="With --create-role: let tasks read s3://bucket[/prefix]. Repeatable."),
        click.option("--s3-write", multiple=True, metavar="S3URL",
                     help="With --create-role: let tasks read and write s3://bucket[/prefix]."
                          " Repeatable."),
        click.option("--deps-on-s3", is_flag=True,
                     help="Keep dependencies in --bucket, unpacked into /tmp on cold starts"
                          " (automatic when the package would exceed Lambda's 250 MB)."),
        click.option("--compatible-versions", is_flag=True,
                     help="Where this client's version of a package has no wheel for the"
                          " runtime, deploy the newest that has one (info shows the difference)."),
        click.option("--memory-tiers", metavar="MB[,MB...]", default="",
                     help="Also deploy variants of the function with these memory sizes, for"
                          " tasks annotated dask.annotate(resources={'memory': MB})."),
        click.option("--snapstart/--no-snapstart", default=None,
                     help="SnapStart (python3.12+): publish a version whose init is snapshotted"
                          " once, and invoke it; new runtimes are restored from the snapshot."
                          " An update of a SnapStart function publishes a new version."),
        click.option("--image/--zip", "image", default=None,
                     help="Deploy a container image (up to 10 GB: AWS's base image for this"
                          " Python plus layers of the dependencies, dask-lambda and PATHS) into"
                          " the ECR repository dask-lambda-NAME, instead of a zip (250 MB)."
                          " update keeps the function's package type."),
        click.option("--exclude", multiple=True, metavar="PATTERN",
                     help="Leave files matching PATTERN out of PATHS (dotfiles, credentials,"
                          " virtualenvs and __pycache__ always are). Repeatable."),
    ]  # fmt: skip

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@main.command()
@click.argument("name")
@_deploy_options(defaults=True)
@click.option("--print-policy", is_flag=True, help="Print the role policy JSON and exit.")
@click.option("--adopt", is_flag=True,
              help="Take over an existing function (or --create-role role) that dask-lambda did"
                   " not create; without it deploy refuses to change them.")  # fmt: skip
@aws_command
def deploy(aws, name: str, print_policy: bool, **options: Any) -> None:
    """Build a package and create (or update) function NAME from it.

    The package holds dask-lambda and its dependencies at this client's versions, the
    --requirements, and PATHS: your own modules and folders, importable inside the function.
    """
    from .deploy.functions import role_policy

    options["prefix"] = options["prefix"] or config.function_prefix(name)
    if print_policy:
        if not options["bucket"]:
            raise click.ClickException("--print-policy needs --bucket (the spill bucket)")
        policy = role_policy(options["bucket"], options["prefix"], name,
                             options["s3_read"], options["s3_write"])  # fmt: skip
        click.echo(json.dumps(policy, indent=2))
        return
    _deploy_or_update(aws, name, options)


@main.command()
@click.argument("name")
@_deploy_options(defaults=False)
@aws_command
def update(aws, name: str, **options: Any) -> None:
    """Update function NAME: change only what differs, keep everything else.

    Settings alone (update NAME --timeout 600) keep the deployed code. The code is rebuilt only
    when PATHS, -r, --include, --no-dependencies, --architecture, --deps-on-s3,
    --compatible-versions or --memory-tiers are given; the
    new package then holds the PATHS given now (pass all of them, as at deploy) and the
    --include packages given now plus those of earlier deploys. Options left out keep their
    current values (--env adds to the current variables); unchanged code is not uploaded again.
    --s3-read/--s3-write replace the data grants of the role dask-lambda created for NAME. A
    function without a signing key gets one.
    """
    from .deploy.admin import require_ours

    current = require_ours(aws.client("lambda"), name)
    variables = (current.get("Environment") or {}).get("Variables", {})
    tags = aws.client("lambda").list_tags(Resource=current["FunctionArn"]).get("Tags", {})
    options["include"] = _merged_includes(options["include"], tags)
    if options["image"] is None:  # Lambda cannot change a function's package type
        options["image"] = current.get("PackageType") == "Image"
    rebuilding_options = ("paths", "requirements", "no_dependencies", "architecture",
                          "deps_on_s3", "compatible_versions", "memory_tiers")  # fmt: skip
    rebuild = any(options[k] for k in rebuilding_options) or bool(
        set(options["include"]) - set(_merged_includes((), tags))
    )
    if (options["s3_read"] or options["s3_write"]) and not options["role"]:
        options["create_role"] = True  # only ever changes a role dask-lambda created
    options["bucket"] = options["bucket"] or variables.get(contract.BUCKET)
    if options["prefix"] is None:  # the function's own (older functions: the shared root)
        options["prefix"] = variables.get(contract.PREFIX) or config.function_prefix(name)
    _deploy_or_update(aws, name, {**options, "adopt": False}, current_env=variables,
                      rebuild=rebuild)  # fmt: skip


INCLUDE_TAG = "dask-lambda:include"


def _merged_includes(given: tuple[str, ...], tags: dict[str, str]) -> list[str]:
    """``--include`` packages given now, plus those recorded at earlier deploys."""
    earlier = [p for p in tags.get(INCLUDE_TAG, "").split(" ") if p]
    return list(dict.fromkeys([*earlier, *given]))


def _deploy_or_update(
    aws, name: str, options: dict, current_env: dict | None = None, rebuild: bool = True
) -> None:
    from .deploy.build import BuildSpec
    from .deploy.functions import FunctionSettings
    from .deploy.provision import Request, provision

    build = None
    if rebuild:
        build = BuildSpec(
            paths=list(options["paths"]),
            requirements=options["requirements"],
            include=list(options["include"]),
            architecture=options["architecture"] or "x86_64",
            with_dependencies=not options["no_dependencies"],
            exclude=list(options["exclude"]),
            deps_on_s3=True if options["deps_on_s3"] else None,
            split_allowed=bool(options["bucket"]),
            compatible_versions=options["compatible_versions"],
        )
    request = Request(
        name=name,
        settings=FunctionSettings(
            memory=options["memory"],
            timeout=options["timeout"],
            ephemeral_storage=options["ephemeral_storage"],
            architecture=options["architecture"],
            layers=list(options["layers"]) or None,
            environment=_parse_env(options["env"]),
            role=options["role"],
            snapstart=options["snapstart"],
        ),
        build=build,
        bucket=options["bucket"],
        prefix=options["prefix"],
        allow=list(options["allow"]),
        create_role=options["create_role"],
        s3_read=list(options["s3_read"]),
        s3_write=list(options["s3_write"]),
        current_env=current_env,
        memory_tiers=_parse_tiers(options["memory_tiers"]),
        adopt=options["adopt"],
        tags={INCLUDE_TAG: " ".join(options["include"])} if options["include"] else None,
        expire_days=options["expire_days"],
        image=bool(options["image"]),
    )
    done = provision(aws.client, request, progress=lambda line: click.echo(line, err=True))
    for memory, tier in done.tiers.items():
        verb = "Created" if tier.created else "Updated"
        click.echo(f"{verb} memory tier {tier.configuration['FunctionName']} ({memory} MB)")
    outcome, configuration = done.outcome, done.configuration
    if outcome.created:
        click.echo(f"Created {configuration['FunctionArn']}")
    else:
        changes = ["code"] if outcome.code_updated else []
        changes += list(outcome.configuration_changes)
        click.echo(f"Updated {name}: {', '.join(changes)}" if changes else f"{name} is up to date")
    if outcome.version:
        click.echo(f"SnapStart: published version {outcome.version} (snapshot made), alias"
                   f" dask-lambda -> {outcome.invoke_target}")  # fmt: skip
    click.echo(
        f"  {configuration.get('MemorySize')} MB, {configuration.get('Timeout')} s,"
        f" {(configuration.get('Architectures') or ['x86_64'])[0]},"
        f" state {configuration.get('State', 'Active')}"
    )


def _parse_tiers(text: str) -> list[int]:
    try:
        tiers = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError:
        raise click.BadParameter(f"{text!r} is not MB[,MB...]", param_hint="--memory-tiers")
    for memory in tiers:
        if not limits.MIN_MEMORY_MB <= memory <= limits.MAX_MEMORY_MB:
            raise click.BadParameter(f"{memory} MB is outside Lambda's {MEMORY_RANGE} MB",
                                     param_hint="--memory-tiers")  # fmt: skip
    return tiers


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    environment = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        environment[key] = value
    return environment


# -- list / delete / info -------------------------------------------------------------------------
@main.command("list")
@aws_command
def list_(aws) -> None:
    """List the functions dask-lambda created (others are not shown)."""
    from .deploy.admin import list_functions

    functions = list_functions(aws.client("lambda"))
    if not functions:
        click.echo("No dask-lambda functions.")
        return
    header = (f"{'NAME':<32} {'PACKAGE':<7} {'MEMORY':>7} {'TIMEOUT':>7} {'ARCH':<7}"
              f" {'PYTHON':<7} {'DASK':<11}")  # fmt: skip
    click.echo(header + " DASK-LAMBDA")
    for f in functions:
        click.echo(
            f"{f.name:<32} {f.package_type.lower():<7} {f.memory:>7} {f.timeout:>7}"
            f" {f.architecture:<7}"
            f" {f.tags.get('python:version', '?'):<7} {f.tags.get('dask:version', '?'):<11}"
            f" {f.tags.get('dask-lambda:version', '?')}"
        )


@main.command()
@click.argument("name")
@click.option("--delete-role", is_flag=True, help="Also delete its role, if dask-lambda made it.")
@click.option("--delete-images", is_flag=True,
              help="Also delete its ECR repository and images (an image function's), if"
                   " dask-lambda made it.")  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@aws_command
def delete(aws, name: str, delete_role: bool, delete_images: bool, yes: bool) -> None:
    """Delete function NAME. Refuses functions dask-lambda did not create."""
    from .deploy.admin import delete_function, require_ours

    require_ours(aws.client("lambda"), name)
    if not yes:
        click.confirm(f"Delete function {name}?", abort=True)
    clients = aws.client("lambda"), aws.client("iam")
    ecr = aws.client("ecr") if delete_images else None
    for removed in delete_function(*clients, name, delete_role, aws.client("ssm"), ecr=ecr):
        click.echo(f"Deleted {removed}")


def _mount_cost(mounted: dict | None) -> str:
    """What unpacking the dependency archive cost the environment that answered."""
    if not mounted:
        return "already unpacked in this environment"
    if not mounted.get("unpacked"):
        return f"already unpacked ({mounted.get('seconds', 0):.2f} s to mount)"
    megabytes = mounted.get("bytes", 0) / 1e6
    download, extract = mounted.get("download_seconds", 0), mounted.get("extract_seconds", 0)
    return (
        f"{megabytes:.0f} MB archive: streamed and unpacked in {download:.1f} s, then"
        f" {extract:.1f} s to finish unpacking, on this cold start"
    )


@main.command()
@click.argument("name")
@aws_command
def info(aws, name: str) -> None:
    """Ping function NAME: its configuration, versions, and whether this client can use it."""
    from .deploy.compatibility import client_libraries, library_differences
    from .function.protocol import version_mismatches, versions
    from .remote.invoker import Invoker

    lam = aws.client("lambda")
    configuration = lam.get_function_configuration(FunctionName=name)
    target = _invoke_target(lam, configuration)

    variables = (configuration.get("Environment") or {}).get("Variables", {})
    parameter = variables.get(contract.KEY_PARAMETER)
    key = contract.read_key(aws.client("ssm"), parameter) if parameter else None
    invoker = Invoker(target, lambda cfg: aws.client("lambda", cfg), 1,
                      configuration.get("Timeout", 60), store=None, infra_retries=1,
                      signing_key=key)  # fmt: skip
    response = invoker.call({"op": "ping"})
    remote, stats = response.get("versions", {}), response.get("stats", {})
    click.echo(f"Function    {configuration['FunctionArn']}")
    click.echo(f"Memory      {configuration.get('MemorySize')} MB, timeout"
               f" {configuration.get('Timeout')} s")  # fmt: skip
    if target != name:
        version = lam.get_function_configuration(FunctionName=target)
        optimization = version["SnapStart"]["OptimizationStatus"]
        click.echo(f"SnapStart   version {target.rsplit(':', 1)[1]} (alias dask-lambda),"
                   f" {version['State']}, optimization {optimization}")  # fmt: skip
    if configuration.get("PackageType") == "Image":
        _echo_image(aws.client("ecr"), lam, name)
    bucket = variables.get(contract.BUCKET)
    click.echo(f"Bucket      {bucket or '(none: pass bucket= to LambdaCluster)'}")
    click.echo(f"Cold start  {stats.get('cold_start')}")
    if contract.DEPENDENCIES in variables:
        click.echo(f"Dependencies from S3, {_mount_cost(stats.get('dependencies'))}")
    for key in ("python_full", "dask", "cloudpickle", "msgpack", "dask_lambda", "protocol"):
        click.echo(f"{key:<11} {remote.get(key, '?')}")
    libraries = library_differences(client_libraries(), response.get("libraries", {}))
    for line in libraries.refused + libraries.warned:
        click.echo(f"Differs     {line}")
    problems = version_mismatches(versions(), remote)
    if problems or libraries.refused:
        click.echo("Compatible  NO: " + "; ".join(problems + libraries.refused))
        if problems:
            click.echo(f"            Redeploy from this environment: dask-lambda update {name}")
        else:
            click.echo(f"            {libraries.fix(name)}")
        raise SystemExit(1)
    if libraries.warned:
        click.echo(f"Compatible  yes, with other minor versions: {libraries.fix(name)}")
        return
    click.echo("Compatible  yes")


def _echo_image(ecr, lam, name: str) -> None:
    """``info``'s lines on an image function's image: digest, size and layers."""
    from .deploy.images import describe

    image = describe(ecr, lam.get_function(FunctionName=name)["Code"]["ImageUri"])
    if image.get("missing"):
        click.echo(f"Image       {image['uri']} (not in its repository any more)")
        return
    click.echo(f"Image       {image['repository']}@{image['digest']}")
    click.echo(f"            {image['size'] / 1e6:.1f} MB compressed, {len(image['layers'])}"
               " layers:")  # fmt: skip
    for layer in image["layers"]:
        click.echo(f"            {layer['digest'][:19]}  {layer['size'] / 1e6:8.1f} MB")


def _invoke_target(lam, configuration: dict) -> str:
    from .deploy.functions import DeployError, invoke_target

    try:
        return invoke_target(lam, configuration)
    except DeployError as e:
        raise click.ClickException(str(e)) from None


# -- logs / clean ---------------------------------------------------------------------------------
@main.command()
@click.argument("name")
@click.option("--since", default="10m", show_default=True, help="How far back: 30s, 10m, 2h, 1d.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("--filter", "pattern", help="Only lines with all these terms.")
@aws_command
def logs(aws, name: str, since: str, follow: bool, pattern: str | None) -> None:
    """Show the logs of function NAME (CloudWatch Logs /aws/lambda/NAME)."""
    import datetime as dt

    from .deploy.admin import log_events, parse_since

    count = 0
    try:
        for event in log_events(aws.client("logs"), name, parse_since(since), pattern, follow):
            stamp = dt.datetime.fromtimestamp(event["timestamp"] / 1000, dt.UTC)
            click.echo(f"{stamp:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  {event['message'].rstrip()}")
            count += 1
    except KeyboardInterrupt:
        pass
    if not count and not follow:
        click.echo(f"No log lines for {name} in the last {since}.", err=True)


@main.command()
@click.option("--bucket", default=config.setting("bucket"), help="Spill bucket to clean.")
@click.option("--prefix", default=config.setting("prefix"), show_default=True)
@click.option(
    "--older-than",
    default="1h",
    show_default=True,
    help="Only spill objects at least this old. Whatever a running client holds (persisted"
    " values, futures, computes in flight) is spared at any age, until its lease expires.",
)
@click.option("--functions", is_flag=True, help="Also delete every function dask-lambda created.")
@click.option("--roles", is_flag=True, help="Also delete every role dask-lambda created.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@aws_command
def clean(aws, bucket, prefix, older_than, functions, roles, yes) -> None:  # fmt: skip
    """Remove leftover spill objects, and optionally tagged functions and roles.

    Only objects dask-lambda wrote are deleted: names of the shape it gives its objects, carrying
    the createdBy=dask-lambda object tag it sets on every write. Your own objects under the same
    bucket or prefix are never listed or touched. What a running client holds (its lease is
    fresh) is spared and listed, whatever its age; a dead client's data is cleanable once its
    lease expired (lambda.lease.ttl).
    """
    from .deploy.admin import (
        delete_function,
        delete_role_if_ours,
        list_functions,
        parse_since,
        stale_objects,
        tagged_roles,
    )
    from .function.storage import S3Store

    plan: list[tuple[str, Any]] = []
    if bucket:
        s3 = aws.client("s3")
        found = stale_objects(s3, bucket, prefix, parse_since(older_than))
        names = found.stale
        for lease, spared in _by_lease(found.held):
            refreshed = time.time() - float(lease["refreshed"])
            click.echo(f"  spared: {len(spared)} objects held by a running client ({lease['owner']}"
                       f" on {lease['host']}, pid {lease['pid']}, lease refreshed"
                       f" {refreshed:.0f} s ago)")  # fmt: skip
        if names:
            shown = "".join(f"\n    s3://{bucket}/{n}" for n in names[:CLEAN_LISTED])
            hidden = len(names) - CLEAN_LISTED
            more = f"\n    ... and {hidden} more" if hidden > 0 else ""
            plan.append((f"{len(names)} objects dask-lambda wrote under s3://{bucket}/{prefix}/"
                         f" (tagged createdBy=dask-lambda; nothing else is touched):{shown}{more}",
                         lambda: S3Store(bucket, s3).delete(names)))  # fmt: skip
    if functions:
        lam, iam = aws.client("lambda"), aws.client("iam")
        for f in list_functions(lam):
            plan.append((f"function {f.name}",
                         functools.partial(delete_function, lam, iam, f.name, False,
                                           aws.client("ssm"))))  # fmt: skip
    if roles:
        iam = aws.client("iam")
        for role in tagged_roles(iam):
            plan.append((f"role {role}", functools.partial(delete_role_if_ours, iam, role)))
    if not bucket and not functions and not roles:
        raise click.ClickException("Nothing to clean: pass --bucket, --functions and/or --roles")
    if not plan:
        click.echo("Nothing to clean.")
        return
    for description, _ in plan:
        click.echo(f"  {description}")
    if not yes:
        click.confirm("Delete all of the above?", abort=True)
    for description, action in plan:
        action()
        click.echo(f"Deleted {description}")


def _by_lease(held: dict[str, dict]) -> list[tuple[dict, list[str]]]:
    groups: dict[str, tuple[dict, list[str]]] = {}
    for name, lease in held.items():
        groups.setdefault(lease["token"], (lease, []))[1].append(name)
    return list(groups.values())


if __name__ == "__main__":
    main()
