"""``LambdaCluster``: the function, the spill bucket, concurrency and the lifecycle around them.

A cluster is a Dask get function (``x.compute(scheduler=cluster)``). With no function configured
it starts the embedded local Lambda (:class:`dask_lambda.emulator.LocalLambda`), deploys the
dask-lambda handler into it and creates a spill bucket, all torn down by :meth:`close`. Given a
``function_name`` it uses that function (deployed with ``dask-lambda deploy``) on AWS, or on
``endpoint_url``, through boto3's usual credential and region chain. Either way the code path is
the same: boto3 clients with an endpoint, no local branch.
"""

from __future__ import annotations

import enum
import threading
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask

from . import config
from .aws import Aws, lambda_endpoint, signed_post
from .backend import Backend
from .exceptions import NoActiveClusterError, VersionMismatchError, VersionWarning
from .function import contract
from .function.protocol import version_mismatches, versions
from .function.storage import S3Store
from .ownership import Ledger
from .packages import PackageSync, client_version
from .remote.invoker import Invoker
from .report import ComputeReport
from .scheduling.compute import Compute
from .settings import Settings

LOCAL_BUCKET = "dask-lambda-local"
LOCAL_ROLE = "dask-lambda-local"

_active: list[weakref.ref] = []  # weak: an unclosed, forgotten cluster still gets collected
_active_lock = threading.Lock()
_shuffle_set = False  # whether dask-lambda set the default shuffle method (and may unset it)


class Status(enum.Enum):
    created = "created"
    running = "running"
    closed = "closed"


def _use_task_shuffle(clusters_running: bool) -> None:
    """While a cluster runs, collections default to the task-based shuffle (bag and dataframe).

    Dask's default is a shuffle through local disk, which cannot work on Lambda (see
    :func:`.graph.refuse_what_cannot_run_remotely`), as ``distributed`` switches the default
    while a client runs. A method the user chose is never changed. Called with ``_active_lock``
    held.
    """
    global _shuffle_set
    current = dask.config.get("dataframe.shuffle.method", None)
    if clusters_running and current is None:
        dask.config.set({"dataframe.shuffle.method": "tasks"})
        _shuffle_set = True
    elif not clusters_running and _shuffle_set:
        if current == "tasks":
            dask.config.set({"dataframe.shuffle.method": None})
        _shuffle_set = False


def current_cluster() -> LambdaCluster:
    """The most recently started cluster that is still running."""
    with _active_lock:
        for ref in reversed(_active):
            cluster = ref()
            if cluster is not None and cluster.status is Status.running:
                return cluster
    raise NoActiveClusterError(
        'scheduler="lambda" needs a running LambdaCluster: create one first'
        " (cluster = dask_lambda.LambdaCluster()) or pass scheduler=cluster."
    )


class LambdaCluster:
    """Runs Dask graphs on an AWS Lambda function.

    Every argument defaults to ``None``, which takes the ``lambda.*`` setting of dask.config
    (``lambda.yaml``; environment variables like ``DASK_LAMBDA__FUNCTION_NAME`` work).

    Parameters
    ----------
    function_name
        Function to invoke (deployed with ``dask-lambda deploy``). If unset, the cluster starts the
        embedded local Lambda and deploys dask-lambda's handler into it.
    bucket
        S3 bucket for spilled payloads and results. If unset: created for the local Lambda, or
        read from the function's ``DASK_LAMBDA_BUCKET`` environment variable.
    prefix
        The function's S3 spill prefix; by default the one it was deployed with, else
        ``<lambda.prefix>/<function name>``. Each compute writes under ``<prefix>/<compute id>/``
        and deletes what it wrote at the end, but for what a persist or a future holds.
    region, endpoint_url
        Where the function and bucket are (boto3's chain if unset).
    memory, timeout
        MB and seconds for a function the cluster deploys itself.
    max_concurrency
        Invocations in flight at most.
    max_tasks, max_bytes, per_slot
        Batching: most tasks and inline-input bytes per invocation; batches per free slot.
    inline_limit
        Pickled results and literals above this many bytes travel through S3.
    infra_retries, retry_backoff
        Bounded retries with jittered exponential backoff for infrastructure failures (a task's
        own exceptions are retried only with ``compute(retries=N)``).
    check_versions
        Ping a deployed function (``function_name``) on start and refuse Python, dask or
        cloudpickle mismatches. A function the cluster deploys itself is built from this
        client's installed files, so it matches by construction and is not pinged: its first
        runtime starts with the first compute.
    packages
        For the function the cluster deploys itself: installed packages to deploy with it at
        this client's versions, beyond dask-lambda's own (``dask[array]``, ``cloudpickle``,
        ``msgpack``), e.g. ``["pandas", "pyarrow", "s3fs"]``. Tasks see nothing else, as on
        AWS. Past Lambda's 250 MB the dependencies go to the bucket and are unpacked into
        ``/tmp`` on cold starts. ``"auto"`` (the default): the function starts with
        dask-lambda's own, and before a batch is sent the packages its pickle references that
        the function lacks are added (:meth:`add_packages`), once, with a line saying so.
    s3_read, s3_write
        For the function the cluster deploys itself: ``s3://bucket[/prefix]`` locations its
        role may read, or read and write (the local Lambda enforces IAM, as AWS does).
    memory_tiers
        Memory sizes (MB) of variants of the function (same code, role and key) for tasks
        annotated ``dask.annotate(resources={"memory": MB})``: each runs on the smallest tier
        with that much. The cluster creates them for the function it deploys; for a named
        function, ``dask-lambda deploy NAME --memory-tiers MB,...`` does.
    snapstart
        SnapStart for the function the cluster deploys itself (python3.12 or later): each
        deploy publishes a version whose init AWS runs once and snapshots, and the cluster
        invokes that version; new runtimes are restored from the snapshot instead of importing
        everything again. A named function deployed with ``dask-lambda deploy --snapstart`` is
        invoked at the version its ``dask-lambda`` alias points to when the cluster starts.
    image
        Deploy the function the cluster deploys itself as a container image (AWS's base image
        for this Python plus layers of the packages, dask-lambda and nothing else, pushed to
        the local Lambda's registry) instead of a zip: for stacks over the zip's 250 MB. A
        named function is deployed as one with ``dask-lambda deploy NAME --image``.

    Attributes
    ----------
    build_report : dict
        For a function the cluster deployed itself: its packages, sizes, whether the
        dependencies live in S3 and the seconds each start-up step took (what mounting the
        dependencies costs each cold start is in :attr:`last_report`'s ``dependency_mounts``).

    Examples
    --------
    >>> import dask.bag as db
    >>> with LambdaCluster() as cluster:                                # doctest: +SKIP
    ...     db.from_sequence(range(100)).map(lambda x: x + 1).sum().compute(scheduler=cluster)
    5050
    """

    def __init__(
        self,
        function_name: str | None = None,
        bucket: str | None = None,
        prefix: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        memory: int | None = None,
        timeout: int | None = None,
        max_concurrency: int | None = None,
        max_tasks: int | None = None,
        max_bytes: int | None = None,
        per_slot: int | None = None,
        inline_limit: int | None = None,
        infra_retries: int | None = None,
        retry_backoff: float | None = None,
        check_versions: bool = True,
        packages: list[str] | str | None = None,
        s3_read: list[str] | None = None,
        s3_write: list[str] | None = None,
        memory_tiers: list[int] | None = None,
        snapstart: bool | None = None,
        image: bool | None = None,
    ):
        self.settings = settings = Settings.from_config(
            function_name=function_name, bucket=bucket, region=region, endpoint_url=endpoint_url,
            memory=memory, timeout=timeout, max_concurrency=max_concurrency, max_tasks=max_tasks,
            max_bytes=max_bytes, per_slot=per_slot, inline_limit=inline_limit,
            infra_retries=infra_retries, retry_backoff=retry_backoff, packages=packages,
            s3_read=s3_read, s3_write=s3_write, memory_tiers=memory_tiers, snapstart=snapstart,
            image=image,
        )  # fmt: skip
        self.function_name = settings.function_name
        self.bucket = settings.bucket
        self._explicit_prefix = prefix
        self.prefix = (prefix or "").strip("/")  # known once the function is
        self.region, self.endpoint_url = settings.region, settings.endpoint_url
        self.memory, self.timeout = settings.memory, settings.timeout
        self.infra_retries, self.retry_backoff = settings.infra_retries, settings.retry_backoff
        self.local = None
        self.status = Status.created
        self.last_report: ComputeReport | None = None
        # A loopback endpoint (`dask-lambda local`'s exports, endpoint_url=) is a local Lambda
        # on this machine, whatever function it runs: sized and labelled as one.
        self.on_local_lambda = settings.on_local_lambda
        self._check_versions = check_versions
        # "auto": sync what tasks reference (dask_lambda.packages); a list: exactly those.
        self.sync_packages = settings.packages == "auto"
        self.packages = [] if self.sync_packages else list(settings.packages)
        self._function_libraries: dict[str, str] | None = None
        self._deploy_lock = threading.Lock()
        self.s3_read, self.s3_write = list(settings.s3_read), list(settings.s3_write)
        self.memory_tiers = list(settings.memory_tiers)
        self.build_report: dict[str, Any] = {}
        self._finalizer: weakref.finalize | None = None
        self.start()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> LambdaCluster:
        if self.status is Status.running:
            return self
        if self.status is Status.closed:
            raise RuntimeError("This LambdaCluster is closed; create a new one")
        resources: dict[str, Any] = {}
        self._finalizer = weakref.finalize(self, _release, resources, repr(self))
        preload = threading.Thread(target=_import_distributed, daemon=True)
        preload.start()
        try:
            self.aws = Aws(region=self.region, endpoint_url=self.endpoint_url)
            if self.function_name is None:
                self._start_local(resources)
            self.backend = self._connect(resources)
            if self._check_versions and self.local is None:
                self.check_versions()
            preload.join()
        except BaseException:
            self._finalizer.detach()
            _release(resources, None)
            self.status = Status.closed
            raise
        self.status = Status.running
        with _active_lock:
            _active.append(weakref.ref(self))
            _use_task_shuffle(True)
        return self

    def _connect(self, resources: dict) -> Backend:
        """The running function's :class:`Backend`: its configuration, bucket, prefix, key,
        store, ledger, invokers (one per memory tier) and invocation pool."""
        function = self._describe_function()
        env = (function.get("Environment") or {}).get("Variables", {})
        if self.bucket is None:
            self.bucket = env.get(contract.BUCKET)
        if self._explicit_prefix is None:  # what its role may write
            self.prefix = env.get(contract.PREFIX) or config.function_prefix(self.function_name)
        signing_key = self._signing_key(env)
        if not self.bucket:
            raise ValueError(
                f"No spill bucket for function {self.function_name!r}: pass bucket=, set"
                " lambda.bucket (DASK_LAMBDA__BUCKET), or deploy with --bucket"
            )
        store = S3Store(self.bucket, client=self._client("s3"), kms_key_id=self.settings.kms_key_id)
        self._check_bucket(store)
        ledger = resources["ledger"] = Ledger(
            store, self.prefix, f"cluster {self.function_name!r}",
            lease_ttl=self.settings.lease_ttl, lease_refresh=self.settings.lease_refresh,
        ).start()  # fmt: skip
        timeout = int(function.get("Timeout") or self.timeout)

        def invoker_of(name: str) -> Invoker:  # the function's, or one memory tier's
            return Invoker(
                name,
                lambda cfg: self._client("lambda", cfg),
                max_concurrency=self.settings.max_concurrency,
                function_timeout=timeout,
                store=store,
                payload_prefix=self.prefix,
                infra_retries=self.infra_retries,
                retry_backoff=self.retry_backoff,
                throttle_retries=self.settings.throttle_retries,
                throttle_backoff=self.settings.throttle_backoff,
                invoke_client=self.settings.invoke_client,
                signing_key=signing_key,
                credentials=self.aws.session.get_credentials(),
            )

        invoker = invoker_of(self._invoke_target(function))
        tiers = {memory: invoker_of(self._tier(memory)) for memory in self.memory_tiers}
        resources["invokers"] = [invoker, *tiers.values()]
        pool = resources["pool"] = ThreadPoolExecutor(
            self.settings.max_concurrency, thread_name_prefix="dask-lambda-invoke"
        )
        return Backend(
            function_name=self.function_name,
            memory_mb=int(function.get("MemorySize") or self.memory),
            architecture=(function.get("Architectures") or ["x86_64"])[0],
            timeout=timeout,
            invoker=invoker,
            store=store,
            pool=pool,
            settings=self.settings,
            prefix=self.prefix,
            ledger=ledger,
            tiers=tiers,
            local_endpoint=self.on_local_lambda,
            deployed_by_cluster=self.local is not None,
            packages=self._package_sync(),
        )

    def _package_sync(self) -> PackageSync:
        """What checks each batch's modules against the function's packages: adds them to a
        function this cluster deployed with ``packages="auto"``, else warns with the fix."""
        name = self.function_name

        def libraries(stats) -> dict[str, str]:
            if self._function_libraries is None:  # the ping is an invocation of the compute
                answer = self.invoker.call({"op": "ping"}, stats=stats)
                self._function_libraries = answer.get("libraries", {})
            return self._function_libraries

        def fix(names: list[str]) -> str:
            if self.local is not None:
                return f"Add them: cluster.add_packages({names!r})."
            includes = " ".join(f"--include {n}=={client_version(n)}" for n in names)
            return f"Deploy them: dask-lambda update {name} {includes}"

        add = self.add_packages if self.local is not None and self.sync_packages else None
        return PackageSync(name, libraries, add=add, fix=fix)

    def add_packages(self, packages: list[str]) -> dict[str, str]:
        """Add installed ``packages`` (names, at this client's versions, with what they need)
        to the function this cluster deployed, without a new cluster; return the function's
        distributions, ``{name: version}``.

        New invocations run the new code in new runtimes; what runs keeps its runtime. A
        function the cluster did not deploy is updated with ``dask-lambda update NAME
        --include PACKAGE``, which the ``ValueError`` raised for it names.
        """
        if self.local is None:
            includes = " ".join(f"--include {name}" for name in packages)
            raise ValueError(
                f"Lambda function {self.function_name!r} was not deployed by this cluster:"
                f" add packages to it with dask-lambda update {self.function_name} {includes}"
            )
        with self._deploy_lock:
            wanted = [name for name in packages if name not in self.packages]
            if wanted:
                self._deploy_local(*self._build([*self.packages, *wanted]), update=True)
                self.packages.extend(wanted)
        return dict(self._function_libraries or {})

    def _start_local(self, resources: dict) -> None:
        import time

        from .emulator import LocalLambda

        started = time.perf_counter()
        # The package is built (from the cache, mostly) while the server process starts; an
        # image after it, as its base image is the server's.
        with ThreadPoolExecutor(1, thread_name_prefix="dask-lambda-build") as builder:
            building = None if self.settings.image else builder.submit(self._build, self.packages)
            local = resources["local"] = LocalLambda(
                concurrency_limit=self.settings.local_concurrency_limit,
                idle_timeout=self.settings.local_idle_timeout,
            ).start()
            self.local = local
            built, build_seconds = (building or builder.submit(self._build, self.packages)).result()
        self.endpoint_url, self.region = local.endpoint_url, local.region
        credentials = {k: v for k, v in local.client_kwargs().items() if k.startswith("aws_")}
        self.aws = Aws(
            region=local.region, endpoint_url=local.endpoint_url, credentials=credentials
        )
        self.bucket = self.bucket or LOCAL_BUCKET
        self._client("s3").create_bucket(Bucket=self.bucket)
        self.build_report = {
            "server_seconds": round(time.perf_counter() - started, 3),
            **self._deploy_local(built, build_seconds, update=False),
        }

    def _build(self, packages: list[str]) -> tuple[Any, float]:
        """dask-lambda's handler with ``packages`` from this client's installed files (a zip,
        or with ``image`` a container image on the local Lambda's base), and the seconds
        building it took."""
        import time

        from .deploy.build import BuildSpec, build

        started = time.perf_counter()
        # A real package, as AWS would run it: the runtime sees nothing of this client.
        spec = BuildSpec(include=packages, from_installed=True, deps_on_s3=None,
                         split_allowed=True)  # fmt: skip
        if self.settings.image:
            from .deploy.images import build_image

            with dask.config.set({"lambda.image.base": self.local.base_image}):
                return build_image(spec), time.perf_counter() - started
        return build(spec), time.perf_counter() - started

    def _deploy_local(self, built, build_seconds: float, update: bool) -> dict[str, Any]:
        """Deploy a package :meth:`_build` made into the local Lambda (created, or its code
        updated); return what it took."""
        import time

        from .deploy.functions import FunctionSettings
        from .deploy.provision import Request, provision

        package_ready = time.perf_counter()
        current_env = None
        if update:
            current = self._client("lambda").get_function_configuration(
                FunctionName=self.function_name
            )
            current_env = (current.get("Environment") or {}).get("Variables", {})
        else:
            code = built.image.manifest if self.settings.image else built.zip_bytes
            self.function_name = "dask-lambda-" + code_digest(
                code + " ".join(built.pinned).encode()
            )
            if self._explicit_prefix is None:
                self.prefix = config.function_prefix(self.function_name)
        # What `dask-lambda deploy --create-role` would make: the local Lambda enforces the role.
        provisioned = provision(self._client, Request(
            name=self.function_name,
            settings=FunctionSettings(memory=self.memory, timeout=self.timeout,
                                      snapstart=self.settings.snapstart or None),
            built=None if self.settings.image else built, image=self.settings.image,
            built_image=built if self.settings.image else None,
            bucket=self.bucket, prefix=self.prefix, current_env=current_env,
            create_role=True, role_name=LOCAL_ROLE, s3_read=self.s3_read, s3_write=self.s3_write,
            memory_tiers=self.memory_tiers,
            # Through the loopback S3: the server then decodes no 27 MB of base64 JSON.
            stage_code=True,
        ))  # fmt: skip
        self._function_libraries = dict(pin.split("==", 1) for pin in built.pinned)
        if update and provisioned.outcome.version:  # SnapStart: the new code is a new version
            self.backend.invoker.function_name = provisioned.outcome.invoke_target
            for memory, tier in provisioned.tiers.items():
                self.backend.tiers[memory].function_name = tier.invoke_target
        if self.settings.image:
            report = {
                "packages": built.pinned,
                "image": provisioned.pushed.image_uri,
                "image_mb": round(built.image.size / 1e6, 1),
                "unpacked_mb": round(built.unpacked / 1e6, 1),
                "layers_sent": len(provisioned.pushed.sent),
            }
        else:
            report = {
                "packages": built.pinned,
                "zip_mb": round(built.size / 1e6, 1),
                "unpacked_mb": round((built.unpacked_size + built.dependencies_unpacked) / 1e6, 1),
                "dependencies_on_s3": bool(built.dependencies_zip),
            }
        report.update({
            "cached": built.dependencies_cached,
            "build_seconds": round(build_seconds, 3),
            "deploy_seconds": round(time.perf_counter() - package_ready, 3),
        })  # fmt: skip
        if update:
            self.build_report.update(report)
        return report

    def _where(self) -> str:
        region = self.aws.region_name or "no region"
        return f"{region}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _describe_function(self) -> dict[str, Any]:
        """The function's configuration, or an error that says what to fix."""
        import botocore.exceptions as bce

        name = self.function_name
        try:
            return self._client("lambda").get_function_configuration(FunctionName=name)
        except bce.NoCredentialsError:
            raise PermissionError(
                f"No AWS credentials to reach Lambda function {name!r}. Configure them (aws"
                " configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or"
                " leave function_name unset to run on the embedded local Lambda."
            ) from None
        except bce.NoRegionError:
            raise ValueError(
                f"No AWS region for Lambda function {name!r}: pass region= or set AWS_REGION."
            ) from None
        except (bce.ReadTimeoutError, bce.ConnectTimeoutError) as e:
            raise TimeoutError(
                f"Lambda at {e.kwargs.get('endpoint_url')} did not answer within"
                f" {config.setting('api-timeout')} s (lambda.api-timeout): is the endpoint right?"
            ) from None
        except bce.EndpointConnectionError as e:
            raise ConnectionError(
                f"Cannot reach Lambda at {e.kwargs.get('endpoint_url')}: check endpoint_url"
                " (or AWS_ENDPOINT_URL*) and your network."
            ) from None
        except bce.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise ValueError(
                    f"Lambda function {name!r} does not exist in {self._where()}. Deploy it"
                    f" (dask-lambda deploy {name} ...), or check the name and the region."
                ) from None
            if code in ("UnrecognizedClientException", "InvalidSignatureException",
                        "AccessDeniedException", "ExpiredTokenException"):  # fmt: skip
                raise PermissionError(
                    f"AWS refused these credentials for Lambda function {name!r} ({code}):"
                    " check the profile or keys, and that they may call lambda:GetFunction."
                ) from None
            raise

    def _check_bucket(self, store: S3Store) -> None:
        import botocore.exceptions as bce

        try:
            store.client.head_bucket(Bucket=self.bucket)
        except bce.ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise ValueError(
                    f"The spill bucket {self.bucket!r} does not exist in {self._where()}. Create"
                    f" it (aws s3 mb s3://{self.bucket}) or pass another bucket=."
                ) from None
            if status == 403:
                raise PermissionError(
                    f"No access to the spill bucket {self.bucket!r}: these credentials need"
                    f" s3:ListBucket, GetObject, PutObject and DeleteObject on it."
                ) from None
            raise

    def _tier(self, memory: int) -> str:
        """What to invoke for the function's memory tier ``memory``, once it is known to
        exist."""
        import botocore.exceptions as bce

        from .deploy.functions import tier_name

        name = tier_name(self.function_name, memory)
        try:
            return self._invoke_target(
                self._client("lambda").get_function_configuration(FunctionName=name)
            )
        except bce.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            raise ValueError(
                f"Function {self.function_name!r} has no {memory} MB memory tier ({name!r})."
                f" Deploy it: dask-lambda update {self.function_name} --memory-tiers {memory}"
            ) from None

    def _invoke_target(self, configuration: dict[str, Any]) -> str:
        """The function (or tier) to invoke; for SnapStart, its published version."""
        from .deploy.functions import invoke_target

        return invoke_target(self._client("lambda"), configuration)

    def _signing_key(self, env: dict[str, str]) -> bytes:
        parameter = env.get(contract.KEY_PARAMETER)
        if not parameter:
            raise ValueError(
                f"Function {self.function_name!r} has no signing key ({contract.KEY_PARAMETER}),"
                " so it would refuse every task. Update it: dask-lambda update"
                f" {self.function_name}"
            )
        return contract.read_key(self._client("ssm"), parameter)

    @property
    def s3(self):
        """A boto3 S3 client where the function's bucket is, with the cluster's credentials: on
        the embedded local Lambda, its S3 (``cluster.s3.create_bucket(Bucket="my-data")``,
        ``cluster.s3.upload_file(path, "my-data", key)``)."""
        return self._client("s3")

    def _client(self, service: str, client_config=None):
        if client_config is None and service == "s3":  # one connection per concurrent invocation
            from botocore.config import Config

            client_config = Config(max_pool_connections=max(10, self.settings.max_concurrency + 2))
        return self.aws.client(service, client_config)

    def close(self) -> None:
        """Stop using the function; an embedded local Lambda is shut down. Safe to call twice.

        Waits for invocations a compute left running (speculative copies) and deletes what they
        wrote.
        """
        if self.status is Status.closed:
            return
        if self.status is Status.running:
            self.backend.join_cleanups()
            self.backend.ledger.close(f"closing cluster {self.function_name!r}")
            if self.on_local_lambda and self.local is None:
                self._reap_local_runtimes()
        self.status = Status.closed
        with _active_lock:
            _active[:] = [ref for ref in _active if ref() not in (None, self)]
            _use_task_shuffle(any(ref() is not None for ref in _active))
        detached = self._finalizer.detach() if self._finalizer is not None else None
        if detached is not None:
            _release(detached[2][0], None)

    def _reap_local_runtimes(self) -> None:
        """Ask a local Lambda this cluster did not start (``dask-lambda local``) to stop the
        idle runtimes of the function and its memory tiers, as closing the embedded one does.
        Only its admin may; anyone else's request is refused, and that is no error here."""
        import json

        url = f"{lambda_endpoint(self.endpoint_url).rstrip('/')}/_dask_lambda/reap"
        body = json.dumps({"function": self.function_name}).encode()
        try:
            signed_post(self.aws.session, url, body, self.aws.region_name)
        except Exception:  # not the admin, or the local Lambda is gone: its idle timeout reaps
            pass

    def __enter__(self) -> LambdaCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- use ------------------------------------------------------------------------------------
    def get(self, dsk, keys, **kwargs):
        """Dask get function: compute ``keys`` of graph ``dsk`` on Lambda."""
        if self.status is not Status.running:
            raise RuntimeError(f"LambdaCluster is {self.status.value}; create a new one")
        compute = Compute(self.backend, dsk, keys, **_compute_options(kwargs))
        try:
            return compute.run(kwargs.get("callbacks"))
        finally:
            self.last_report = compute.report

    __call__ = get

    def persist(self, collections, optimize_graph: bool = True, **kwargs):
        """Compute ``collections`` and keep their values in the cloud; return them rebuilt on
        those values (one collection, or a list for a list).

        Later computes on the result read the data in Lambda: it never crosses this client.
        Also reached by ``dask.persist(..., scheduler=cluster)`` and ``x.persist(scheduler=...)``
        (dask's persist protocol). The values stay in S3 until the returned collections (and
        everything built on them) are garbage collected, :meth:`unpersist` is called, or the
        cluster closes; :attr:`persisted_bytes` says how much is held.
        """
        from .persist import persist_collections

        def run(expr, keys, **options):
            if self.status is not Status.running:
                raise RuntimeError(f"LambdaCluster is {self.status.value}; create a new one")
            compute = Compute(
                self.backend, expr, keys, **_compute_options({**options, "persist": True})
            )
            try:
                return compute.run(options.get("callbacks")), compute.kept
            finally:
                self.last_report = compute.report

        single = not isinstance(collections, (list, tuple))
        wanted = [collections] if single else list(collections)
        rebuilt = persist_collections(run, self.backend.persisted, wanted, optimize_graph,
                                      **kwargs)  # fmt: skip
        if self.last_report is not None:  # the persist's own report: what it now holds
            self.last_report.bytes_persisted_held = self.persisted_bytes
        return rebuilt[0] if single else rebuilt

    def unpersist(self, *collections) -> None:
        """Delete the values persisted collections hold now (computing them again fails)."""
        from .persist import release_collections

        release_collections(list(collections))

    @property
    def persisted_bytes(self) -> int:
        """Bytes the collections this cluster persisted still hold in S3."""
        return self.backend.persisted.nbytes if self.status is Status.running else 0

    # The backend's parts, for code that used them from the cluster.
    store = property(lambda self: self.backend.store)
    invoker = property(lambda self: self.backend.invoker)
    pool = property(lambda self: self.backend.pool)
    function_timeout = property(lambda self: self.backend.timeout)
    function_memory = property(lambda self: self.backend.memory_mb)
    function_architecture = property(lambda self: self.backend.architecture)

    def plot_timeline(self, path) -> Any:
        """PNG timeline of every invocation this cluster made (see ``ComputeReport``)."""
        from .report import plot_timeline

        with self.invoker.stats.lock:
            records = list(self.invoker.stats.records)
        return plot_timeline(records, path, repr(self.function_name))

    def scale(self, n: int | None = None, **_options: Any) -> None:
        """Nothing to do, for code written for distributed's clusters (``cluster.scale(10)``,
        ``cluster.adapt()``): Lambda starts an execution environment per concurrent invocation
        on demand, up to ``max_concurrency`` (an argument of the cluster) and the account's
        limit, and stops them when idle."""

    adapt = scale

    def ping(self) -> dict[str, Any]:
        """Invoke the function's ping; return its versions and stats."""
        return self.invoker.call({"op": "ping"})

    def check_versions(self) -> dict[str, str]:
        """Raise :class:`VersionMismatchError` unless the function can run this client's pickles.

        Python, dask, cloudpickle and the protocol must match. Any other library both have
        (numpy, pandas, pyarrow, ...) must have the same major version; a minor difference is
        a :class:`VersionWarning`. Both messages give the command that fixes them.
        """
        from .deploy.compatibility import client_libraries, library_differences

        answer = self.ping()
        self._function_libraries = answer.get("libraries", {})
        remote = answer.get("versions", {})
        problems = version_mismatches(versions(), remote)
        libraries = library_differences(client_libraries(), answer.get("libraries", {}))
        if problems or libraries.refused:
            fix = (
                libraries.fix(self.function_name)
                if not problems
                else f"Redeploy it from this environment: dask-lambda update {self.function_name}"
            )
            raise VersionMismatchError(
                f"Lambda function {self.function_name!r} cannot safely run tasks from this client"
                f" ({'; '.join(problems + libraries.refused)}). {fix}"
            )
        if libraries.warned:
            warnings.warn(
                f"Lambda function {self.function_name!r} runs other minor versions of"
                f" {'; '.join(libraries.warned)}: results may differ from a local run."
                f" {libraries.fix(self.function_name)}",
                VersionWarning,
                stacklevel=3,
            )
        return remote

    def __repr__(self) -> str:
        if self.local is not None:
            where = "embedded local Lambda"
        elif self.on_local_lambda:
            where = f"local Lambda at {lambda_endpoint(self.endpoint_url)}"
        else:
            where = self.region or "AWS"
        return (
            f"<LambdaCluster {self.function_name!r} on {where}, {self.status.value},"
            f" max_concurrency={self.settings.max_concurrency}>"
        )


def _compute_options(kwargs: dict) -> dict:
    """The options of ``compute(...)`` a :class:`~.compute.Compute` takes."""
    options = {name: kwargs.get(name) for name in ("cache", "retries", "speculation")}
    return {**options, "persist": bool(kwargs.get("persist"))}


def _import_distributed() -> None:
    """Import ``distributed`` if installed, while the cluster starts.

    dask imports it on the first compute that names no scheduler; when that compute runs inside
    ``dask.config.set({"distributed...": ...})``, as ``read_parquet(filesystem="arrow")``'s
    statistics do during the optimisation of a compute given ``scheduler=cluster``, leaving the
    ``with`` block drops every ``distributed.*`` default (a KeyError later). Imported first, the
    defaults are in place before any such block.
    """
    import importlib.util

    if importlib.util.find_spec("distributed") is not None:
        import distributed  # noqa: F401


def code_digest(code: bytes) -> str:
    import hashlib

    return hashlib.sha256(code).hexdigest()[:12]


def _release(resources: dict, name: str | None) -> None:
    if name is not None:
        warnings.warn(
            f"{name} was never closed; call close() or use it as a context manager",
            ResourceWarning,
            stacklevel=2,
        )
    pool = resources.get("pool")
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    for invoker in resources.get("invokers", ()):
        invoker.close()
    ledger = resources.get("ledger")
    if ledger is not None:  # what it still holds, and its lease
        ledger.close(f"closing {ledger.owner}" if name is None else "a cluster never closed")
    local = resources.get("local")
    if local is not None:
        local.close()
