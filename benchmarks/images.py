"""W10: container images against zips (issue 28): cold starts, and what building and pushing costs.

Cold start (time to the first task result on a fresh runtime, as in W9) for the default package
and for ``pandas + pyarrow + scikit-learn`` (over 250 MB unpacked: as a zip it cannot be
deployed, and the cluster puts its dependencies in S3, unpacked into ``/tmp`` on each cold
start), each as a zip (or zip + dependencies in S3) and as an image. The local Lambda unpacks
an image once, when the function is created (as Lambda optimizes it before the function is
``Active``), and starts each runtime in it: a cold start then imports from the image's
``/var/task`` as from a zip's. AWS's lazy loading of image chunks on a cold start is not
emulated (docs/local-lambda.rst).

Build and push: for pandas + pyarrow + scikit-learn from an empty cache (the dependencies'
layer built, the base image pulled, every layer pushed into an empty repository), again with
everything cached (nothing rebuilt, nothing sent), and after one file of the user's changed
(one layer rebuilt and sent); the zip + S3 path beside it (its archive built, then uploaded).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import dask

from benchmarks.cold_start import import_modules, sample_cold_starts
from benchmarks.rows import timing

SAMPLES = 3
BIG_STACK = ["pandas", "pyarrow", "scikit-learn"]
PACKAGES = {
    "default package": ([], ("dask.bag", "dask.array")),
    "pandas + pyarrow + scikit-learn": (BIG_STACK, ("dask.dataframe", "sklearn.linear_model")),
}


def cold_start(package: str, image: bool, samples: int = SAMPLES) -> dict:
    """Median seconds to a first result on a fresh runtime of a zip or image function."""
    import sys

    import cloudpickle

    from dask_lambda import LambdaCluster

    cloudpickle.register_pickle_by_value(sys.modules["benchmarks.cold_start"])
    packages, modules = PACKAGES[package]
    task = dask.delayed(import_modules)(modules)
    with LambdaCluster(packages=packages, image=image, memory=3008) as cluster:
        times, mounts = sample_cold_starts(cluster, task, len(modules), samples)
        build = cluster.build_report
    size = (f"image {build['image_mb']} MB compressed" if image
            else f"zip {build['zip_mb']} MB")  # fmt: skip
    row = timing(times, unpacked_mb=build["unpacked_mb"])
    for step in ("seconds", "download_seconds", "extract_seconds") if mounts else ():
        row[f"mount_{step}"] = statistics.median(m.get(step, 0.0) for m in mounts)
    where = "image" if image else (
        "zip + dependencies in S3" if build.get("dependencies_on_s3") else "zip")  # fmt: skip
    row["note"] = f"{where}; {size}, {build['unpacked_mb']} MB unpacked"
    return row


def zip_does_not_fit() -> dict:
    """The big stack as a zip alone: what deploy says (it does not fit in 250 MB)."""
    from dask_lambda.deploy.build import BuildError, BuildSpec, build

    try:
        build(BuildSpec(include=BIG_STACK, from_installed=True, deps_on_s3=False))
    except BuildError as e:
        return {"error": f"cannot be deployed as a zip: {str(e).split('.')[0]}"}
    raise AssertionError("the stack fits in a zip after all: pick a larger one")


def build_and_push(kind: str) -> dict:
    """Seconds to build and to push (image) or upload (zip) the big stack with one file of
    the user's: from an empty cache, then with everything cached, then after that file
    changed. A fresh cache (``XDG_CACHE_HOME``) and local Lambda (empty registry) per run."""
    with tempfile.TemporaryDirectory(prefix="w10-") as folder:
        os.environ["XDG_CACHE_HOME"] = str(Path(folder) / "cache")
        user = Path(folder) / "user" / "model.py"
        user.parent.mkdir()
        user.write_text("def version():\n    return 1\n")
        return _build_and_push(kind, user)


def _build_and_push(kind: str, user: Path) -> dict:
    from dask_lambda.deploy.build import BuildSpec, build
    from dask_lambda.deploy.functions import FunctionSettings
    from dask_lambda.deploy.images import build_image
    from dask_lambda.deploy.provision import Request, provision
    from dask_lambda.emulator import LocalLambda

    image = kind == "image"
    rows = {}
    with LocalLambda() as local, dask.config.set({"lambda.image.base": local.base_image}):
        local.client("s3").create_bucket(Bucket="w10-bucket")
        client = local.client
        for step in ("cold cache", "all cached", "one file changed"):
            if step == "one file changed":
                user.write_text("def version():\n    return 2\n")
            spec = BuildSpec(paths=[user.parent], include=BIG_STACK, from_installed=True,
                             deps_on_s3=None if image else True, split_allowed=True)  # fmt: skip
            began = time.perf_counter()
            built = build_image(spec) if image else build(spec)
            built_seconds = time.perf_counter() - began
            request = Request(
                name="w10", settings=FunctionSettings(memory=3008, timeout=60),
                built=None if image else built, built_image=built if image else None,
                image=image, bucket="w10-bucket", prefix="dask-lambda/w10", create_role=True,
            )  # fmt: skip
            began = time.perf_counter()
            done = provision(client, request)
            rows[step] = {
                "build_seconds": round(built_seconds, 2),
                "deploy_seconds": round(time.perf_counter() - began, 2),
            }
            if image:
                sent = [layer for layer in built.image.layers if layer.digest in done.pushed.sent]
                rows[step]["sent_mb"] = round(sum(layer.size for layer in sent) / 1e6, 1)
                rows[step]["layers_sent"] = len(sent)
            else:
                package = len(built.zip_bytes) + len(built.dependencies_zip or b"")
                rows[step]["package_mb"] = round(package / 1e6, 1)
    cold, cached, changed = rows["cold cache"], rows["all cached"], rows["one file changed"]
    row = timing([cold["build_seconds"] + cold["deploy_seconds"]])
    row.update({f"{step.replace(' ', '_')}_{k}": v for step, values in rows.items()
                for k, v in values.items()})  # fmt: skip
    row["note"] = (
        f"build + {'push' if image else 'upload'} + deploy: cold {cold['build_seconds']} +"
        f" {cold['deploy_seconds']} s; cached {cached['build_seconds']} +"
        f" {cached['deploy_seconds']} s; one file changed {changed['build_seconds']} +"
        f" {changed['deploy_seconds']} s"
    )
    return row


PEERS = {
    **{f"{package}, zip": (cold_start, (package, False)) for package in PACKAGES},
    **{f"{package}, image": (cold_start, (package, True)) for package in PACKAGES},
}
BUILD_PEERS = {
    "pandas + pyarrow + scikit-learn, zip alone": (zip_does_not_fit, ()),
    "build and push: image": (build_and_push, ("image",)),
    "build and upload: zip + dependencies in S3": (build_and_push, ("zip",)),
}
