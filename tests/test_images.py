"""Container-image functions on the local Lambda: built without a daemon, pushed through its
registry (the distribution registry behind moto's ECR), run from the unpacked image."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request

import dask
import pytest
import tasks
from conftest import cli, unique

from dask_lambda import LambdaCluster
from dask_lambda.deploy import images
from dask_lambda.emulator.images import shared_root
from dask_lambda.emulator.registry import registry_binary


def test_the_registry_is_installed():
    assert registry_binary(), "apt-get install docker-registry (ci/test installs it)"


@pytest.fixture
def image_env(aws_env, local):
    """The exports of `dask-lambda local` (its stand-in base image included), in this process."""
    with dask.config.set({"lambda.image.base": local.base_image}):
        yield aws_env


def _sent_blobs(local) -> int:
    return local.registry_stats()["blobs_pushed"]


def test_image_deploy_compute_update_delete(local, image_env, bucket, user_module):
    name = unique("image")
    before = _sent_blobs(local)
    result = cli("deploy", name, str(user_module), "--image", "--create-role", "--bucket", bucket,
                 "--memory", "1024")  # fmt: skip
    assert "Created arn:aws:lambda" in result.output
    first_push = _sent_blobs(local) - before
    assert first_push >= 5  # base layers (2), dependencies, dask-lambda, your files, config
    lam, ecr = local.client("lambda"), local.client("ecr")
    function = lam.get_function(FunctionName=name)
    assert function["Configuration"]["PackageType"] == "Image"
    uri = function["Code"]["ImageUri"]
    assert f"/{images.repository_name(name)}@sha256:" in uri
    repository = ecr.describe_repositories(repositoryNames=[images.repository_name(name)])
    arn = repository["repositories"][0]["repositoryArn"]
    assert images.CREATED_BY in ecr.list_tags_for_resource(resourceArn=arn)["tags"]

    with LambdaCluster(function_name=name) as cluster:
        x = dask.delayed(tasks.call_by_name)("only_in_zip", "triple", 14)
        assert x.compute(scheduler=cluster) == 42
        where = dask.delayed(tasks.module_file)("only_in_zip").compute(scheduler=cluster)
        assert where == "/var/task/only_in_zip.py"  # the image's layer, as Lambda mounts it
        seen = dask.delayed(tasks.image_view)(os.getcwd(), os.getpid()).compute(
            scheduler=cluster)  # fmt: skip
        # Its role may not push images (no registry token): IAM, as on AWS.
        denied = dask.delayed(tasks.registry_token_error)().compute(scheduler=cluster)
        assert denied == "AccessDeniedException"
    # What the image holds is what the task sees: the base's runtime and entry point, the
    # function's own environment, and nothing of this machine's but the system's folders.
    assert seen["awslambdaric"].startswith("/var/runtime/awslambdaric/")
    assert seen["entrypoint"] and seen["bootstrap"] and seen["task_root"] == "/var/task"
    assert not seen["client_folder"] and seen["writable_task"] is False
    # ...and its own processes, with no capabilities, as the zip functions' sandbox.
    assert seen["client_process"] is False and seen["capabilities"] == "0000000000000000"

    listed = [line for line in cli("list").output.splitlines() if line.startswith(name)]
    assert listed and listed[0].split()[1] == "image"
    shown = cli("info", name).output
    digest = uri.rpartition("@")[2]
    assert f"Image       {images.repository_name(name)}@{digest}" in shown
    assert "layers:" in shown and shown.count("MB\n") >= 5  # one line per layer

    user_module.write_text("def triple(x):\n    return 'new ' * x\n")
    before = _sent_blobs(local)
    updated = cli("update", name, str(user_module))
    assert "Updated" in updated.output and "code" in updated.output
    assert "1 of 5 layers sent" in updated.output
    # Unchanged layers are neither rebuilt nor sent; only yours is packed again.
    assert "dependencies: layer from cache" in updated.output
    assert "dask-lambda's function code: layer from cache" in updated.output
    assert "your files: packing 1 files" in updated.output
    assert _sent_blobs(local) - before == 2  # the changed layer and the new config, no more
    new_uri = lam.get_function(FunctionName=name)["Code"]["ImageUri"]
    assert new_uri != uri
    with LambdaCluster(function_name=name) as cluster:
        x = dask.delayed(tasks.call_by_name)("only_in_zip", "triple", 2)
        assert x.compute(scheduler=cluster) == "new new "
    assert f"{name} is up to date" in cli("update", name, str(user_module)).output

    deleted = cli("delete", name, "--delete-images", "--yes").output
    assert f"ECR repository {images.repository_name(name)}" in deleted
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.describe_repositories(repositoryNames=[images.repository_name(name)])
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=name)


def test_foreign_repository_is_refused(local, image_env, bucket, user_module):
    name = unique("foreign")
    ecr = local.client("ecr")
    ecr.create_repository(repositoryName=images.repository_name(name))  # not dask-lambda's
    before = _sent_blobs(local)
    result = cli("deploy", name, str(user_module), "--image", "--create-role", "--bucket", bucket,
                 ok=False)  # fmt: skip
    assert result.exit_code != 0
    assert "was not created by dask-lambda" in result.output and "--adopt" in result.output
    assert _sent_blobs(local) == before  # nothing pushed into it
    with pytest.raises(local.client("lambda").exceptions.ResourceNotFoundException):
        local.client("lambda").get_function(FunctionName=name)
    assert not ecr.describe_images(repositoryName=images.repository_name(name))["imageDetails"]
    # delete --delete-images deletes only dask-lambda's repositories either.
    assert images.delete_repository(ecr, images.repository_name(name)) is False
    ecr.describe_repositories(repositoryNames=[images.repository_name(name)])


def test_an_image_over_10_gb_unpacked_is_refused(image_env, tmp_path):
    from dask_lambda import limits
    from dask_lambda.deploy.build import BuildSpec
    from dask_lambda.deploy.oci import ImageError

    huge = tmp_path / "huge.bin"
    with huge.open("wb") as sparse:  # holes: no disk used
        sparse.truncate(limits.IMAGE_UNPACKED_BYTES)
    spec = BuildSpec(paths=[huge], with_dependencies=False)
    packed = []
    with pytest.raises(ImageError, match="over the 10 GB Lambda runs"):
        images.build_image(spec, progress=packed.append)
    assert not [line for line in packed if "packing" in line]  # refused before any layer


def test_images_refuse_snapstart_layers_and_a_package_type_change(local, image_env, bucket,
                                                            user_module):  # fmt: skip
    refused = cli("deploy", unique("snap"), "--image", "--snapstart", "--create-role", "--bucket",
                  bucket, ok=False)  # fmt: skip
    assert refused.exit_code != 0 and "SnapStart to container images" in refused.output

    for options, message in ((["--layers", "arn:aws:lambda:us-east-1:123456789012:layer:x:1"],
                              "layers cannot be added to a container image"),
                             (["--deps-on-s3"], "one of --image and --deps-on-s3")):  # fmt: skip
        refused = cli("deploy", unique("image"), "--image", *options, "--create-role",
                      "--bucket", bucket, ok=False)  # fmt: skip
        assert refused.exit_code != 0 and message in refused.output

    name = unique("zip-then-image")
    cli("deploy", name, str(user_module), "--create-role", "--bucket", bucket)
    changed = cli("update", name, str(user_module), "--image", ok=False)
    assert changed.exit_code != 0
    assert "cannot change a function's package type" in changed.output
    assert local.client("lambda").get_function(FunctionName=name)["Configuration"][
        "PackageType"
    ] == "Zip"  # fmt: skip


def test_a_stack_over_250_mb_runs_from_an_image(local):
    packages = ["pandas", "pyarrow", "scikit-learn"]
    with LambdaCluster(image=True, packages=packages, memory=3008,
                       memory_tiers=[1024]) as cluster:  # fmt: skip
        report = cluster.build_report
        lam = cluster._client("lambda")
        tier = lam.get_function(FunctionName=f"{cluster.function_name}--1024mb")
        assert tier["Configuration"]["PackageType"] == "Image"  # the tier runs the same image
        assert tier["Code"]["ImageUri"] == report["image"]
        assert report["unpacked_mb"] > 250  # past what a zip (with its layers) may hold
        assert report["image"].endswith(report["image"].rpartition("@")[2])
        variables = cluster._client("lambda").get_function_configuration(
            FunctionName=cluster.function_name
        )["Environment"]["Variables"]
        assert "DASK_LAMBDA_DEPENDENCIES" not in variables  # no archive in S3 to unpack
        fit = dask.delayed(tasks.fit_tiny_model)()
        where = dask.delayed(tasks.module_file)("sklearn")
        with dask.annotate(resources={"memory": 1024}):
            small = dask.delayed(tasks.fit_tiny_model)()
        score, sklearn_file, on_tier = dask.compute(fit, where, small, scheduler=cluster)
        assert score == on_tier == 1.0
        assert sklearn_file.startswith("/var/task/sklearn/")
        assert not cluster.last_report.dependency_mounts


def _registry(local, path: str, method: str = "GET", token: str | None = None, data=None):
    request = urllib.request.Request(f"{local.endpoint_url}{path}", method=method, data=data)
    if token is not None:
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_registry_needs_a_token_of_get_authorization_token(local):
    ecr = local.client("ecr")
    name = unique("guarded")
    ecr.create_repository(repositoryName=name)
    path = f"/v2/{name}/blobs/uploads/"
    assert _registry(local, path, "POST")[0] == 401
    moto_token = base64.b64encode(b"AWS:123456789012-auth-token").decode()  # moto's fixed one
    assert _registry(local, path, "POST", moto_token)[0] == 401
    token = ecr.get_authorization_token()["authorizationData"][0]
    assert token["proxyEndpoint"] == local.endpoint_url
    status, _ = _registry(local, path, "POST", token["authorizationToken"])
    assert status == 202
    status, body = _registry(local, "/v2/not-a-repository/tags/list", token=token[
        "authorizationToken"])  # fmt: skip
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
    # The public gallery's stand-in: anonymous pulls with a token its challenge points to (as
    # public.ecr.aws does), no pushes.
    public = "/v2/public.ecr.aws/lambda/python"
    try:
        urllib.request.urlopen(f"{local.endpoint_url}{public}/tags/list", timeout=60)
        raise AssertionError("an anonymous pull without a token was answered")
    except urllib.error.HTTPError as e:
        assert e.code == 401
        challenge = e.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="') and 'service="public.ecr.aws"' in challenge
    realm = challenge.split('"')[1]
    with urllib.request.urlopen(f"{realm}?service=public.ecr.aws", timeout=60) as answer:
        bearer = json.loads(answer.read())["token"]
    listed = urllib.request.Request(f"{local.endpoint_url}{public}/tags/list",
                                    headers={"Authorization": f"Bearer {bearer}"})  # fmt: skip
    with urllib.request.urlopen(listed, timeout=60) as answer:
        assert answer.status == 200 and "3." in json.loads(answer.read())["tags"][0]
    push = urllib.request.Request(f"{local.endpoint_url}{public}/blobs/uploads/", method="POST",
                                  headers={"Authorization": f"Bearer {bearer}"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError, match="405"):
        urllib.request.urlopen(push, timeout=60)


def _hostile_layer(tmp_path, members) -> tuple[bytes, str]:
    """A gzipped tar of ``(name, kind, data or link target)`` entries, as an attacker writes it."""
    import gzip
    import hashlib
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "huge":  # a header claiming ``value`` bytes that never follow
                info.size = value
                header = info.tobuf(tar.format, tar.encoding, tar.errors)
                tar.fileobj.write(header)
                tar.offset += len(header)
            elif kind in ("link", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "link" else tarfile.LNKTYPE
                info.linkname = value
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    return gzip.compress(raw.getvalue(), mtime=0), diff_id


HOSTILE_IMAGES = {  # each a list of layers, each a list of (name, kind, content or target)
    "dot-dot": [[("../../../../tmp/escaped-from-an-image", "file", b"x")]],
    "write-through-a-link": [[("var/task/out", "link", "/tmp"),
                              ("var/task/out/escaped-from-an-image", "file", b"x")]],
    # A whiteout is never extracted by tar (its filter never sees it): it must not delete
    # through a link either.
    "whiteout-through-a-link": [[("var/task/out", "link", "{victim_folder}"),
                                 ("var/task/out/.wh.victim", "file", b"")]],
    "hard-link-out": [[("var/task/passwd", "hardlink", "../../../../../../{victim}")]],
    # Layers are unpacked apart and then stacked: a lower layer's link must not lead the upper
    # layer's files, or its whiteouts, out of the root either. The upper layer's folder
    # replaces the link (as overlay filesystems do), so these run, with nothing outside touched.
    "link-then-write-across-layers": [[("var/task/out", "link", "{victim_folder}")],
                                      [("var/task/out/victim", "file", b"overwritten")]],
    "link-then-whiteout-across-layers": [[("var/task/out", "link", "{victim_folder}")],
                                         [("var/task/out/.wh.victim", "file", b"")]],
}  # fmt: skip
HARMLESS_ONCE_STACKED = {"link-then-write-across-layers", "link-then-whiteout-across-layers"}


@pytest.mark.parametrize("attack", list(HOSTILE_IMAGES))
def test_an_image_cannot_touch_anything_outside_its_root(local, role_arn, tmp_path, attack):
    victim = tmp_path / "victim"
    victim.write_text("this machine's file")
    layers = [
        _hostile_layer(tmp_path, [
            (name, kind, value.format(victim_folder=tmp_path, victim=str(victim)[1:])
             if isinstance(value, str) else value)
            for name, kind, value in members
        ])
        for members in HOSTILE_IMAGES[attack]
    ]  # fmt: skip
    name = unique("hostile")
    uri = _push_image(local, name, layers)
    lam = local.client("lambda")
    try:
        lam.create_function(FunctionName=name, PackageType="Image", Role=role_arn,
                            Code={"ImageUri": uri})  # fmt: skip
    except lam.exceptions.InvalidParameterValueException as e:
        assert attack not in HARMLESS_ONCE_STACKED, e
        assert "outside" in str(e) or "link" in str(e)
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.get_function(FunctionName=name)
    else:
        assert attack in HARMLESS_ONCE_STACKED, "a hostile image was accepted"
        lam.delete_function(FunctionName=name)
    assert not os.path.exists("/tmp/escaped-from-an-image")
    assert victim.read_text() == "this machine's file"


def test_the_local_lambda_refuses_an_image_over_10_gb_unpacked(local, role_arn, tmp_path):
    from dask_lambda import limits

    name = unique("huge")
    layer = _hostile_layer(tmp_path, [("var/task/huge.bin", "huge",
                                       limits.IMAGE_UNPACKED_BYTES + 1)])  # fmt: skip
    uri = _push_image(local, name, [layer])
    lam = local.client("lambda")
    with pytest.raises(lam.exceptions.InvalidParameterValueException,
                       match="smaller than 10 GB uncompressed"):  # fmt: skip
        lam.create_function(FunctionName=name, PackageType="Image", Role=role_arn,
                            Code={"ImageUri": uri})  # fmt: skip
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=name)


def test_a_layer_that_is_not_a_whole_tar_is_the_image_s_fault(local, role_arn, tmp_path):
    """A truncated layer is refused as the caller's error (400), never a crash of the service."""
    name = unique("truncated")
    layer = _hostile_layer(tmp_path, [("var/task/data.bin", "huge", 1 << 20)])  # no data follows
    uri = _push_image(local, name, [layer])
    lam = local.client("lambda")
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match="cannot be unpacked"):
        lam.create_function(FunctionName=name, PackageType="Image", Role=role_arn,
                            Code={"ImageUri": uri})  # fmt: skip
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=name)
    store = shared_root()
    assert not [*store.glob("*.partial"), *(store / "layers").glob("*.partial")]  # none half-made


def _push_image(local, name: str, layers: list[tuple[bytes, str]]) -> str:
    """Push an image of ``(gzipped layer, diff id)`` into the repository of function ``name``,
    as an attacker could with the account's ECR token; its URI by digest."""
    from dask_lambda.deploy import oci

    ecr = local.client("ecr")
    repository = images.ensure_repository(ecr, images.repository_name(name))
    diff_ids = [diff_id for _, diff_id in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["x.y"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": oci.sha256_digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": oci.OCI_LAYER, "digest": oci.sha256_digest(layer),
                    "size": len(layer)} for layer, _ in layers],
    }).encode()  # fmt: skip
    registry = images.ecr_registry(ecr)
    for blob in [*(layer for layer, _ in layers), config]:
        registry.push_blob(repository["repositoryName"], oci.sha256_digest(blob), blob)
    digest = registry.put_manifest(repository["repositoryName"], "latest", manifest,
                                   oci.OCI_MANIFEST)  # fmt: skip
    registry.close()
    return f"{repository['repositoryUri']}@{digest}"


def test_an_image_runs_without_a_sandbox_too(monkeypatch):
    """Where bubblewrap cannot run (macOS), an image function runs from its unpacked image."""
    monkeypatch.setenv("DASK_LAMBDA__LOCAL__ISOLATION", "none")
    with pytest.warns(RuntimeWarning, match="without a sandbox"), LambdaCluster(
        image=True
    ) as cluster:  # fmt: skip
        dask_file = dask.delayed(tasks.module_file)("dask").compute(scheduler=cluster)
        runtime_file = dask.delayed(tasks.module_file)("awslambdaric").compute(scheduler=cluster)
    assert "/local-images/" in dask_file and dask_file.endswith("/rootfs/var/task/dask/__init__.py")
    assert runtime_file.endswith("/rootfs/var/runtime/awslambdaric/__init__.py")
