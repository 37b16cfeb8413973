"""The OCI image format as dask-lambda writes and unpacks it: reproducible layers, the config and
manifest they make, references, platforms, and whiteouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from dask_lambda.deploy import oci
from dask_lambda.deploy.registry import split_reference
from dask_lambda.emulator import images as local_images


@pytest.fixture(autouse=True)
def blob_store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_layers_are_reproducible_and_content_addressed(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("x = 1\n")
    first = oci.write_layer([(source, "pkg/module.py"), (b"data", "pkg/data.bin")])
    os.utime(source, (0, 12345))  # another mtime, same content
    again = oci.write_layer([(b"data", "pkg/data.bin"), (source, "pkg/module.py")])
    assert again == first
    compressed = first.path.read_bytes()
    assert oci.sha256_digest(compressed) == first.digest and len(compressed) == first.size
    assert oci.sha256_digest(gzip.decompress(compressed)) == first.diff_id
    with tarfile.open(first.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["var", "var/task", "var/task/pkg", "var/task/pkg/data.bin",
                             "var/task/pkg/module.py"]  # fmt: skip
    assert {(m.uid, m.gid, m.mtime) for m in members.values()} == {(0, 0, 1577836800)}
    source.write_text("x = 2\n")
    assert oci.write_layer([(source, "pkg/module.py"), (b"data", "pkg/data.bin")]) != first


def _base(architecture="amd64") -> oci.BaseImage:
    layer = oci.write_layer([(b"runtime", "bootstrap")], root="var/runtime")
    config = {"architecture": architecture, "os": "linux",
              "config": {"Entrypoint": ["/lambda-entrypoint.sh"], "Env": ["A=1"]},
              "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}  # fmt: skip
    return oci.BaseImage("example.com/base:1", "sha256:" + "0" * 64, config, [layer])


def test_compose_keeps_the_base_and_adds_the_command():
    base = _base()
    own = oci.write_layer([(b"print(1)", "app.py")], comment="your files")
    image = oci.compose(base, [own], ["app.handler"], "x86_64")
    manifest, config = json.loads(image.manifest), json.loads(image.config)
    assert manifest["mediaType"] == oci.OCI_MANIFEST
    assert manifest["config"]["digest"] == oci.sha256_digest(image.config)
    assert [layer["digest"] for layer in manifest["layers"]] == [base.layers[0].digest, own.digest]
    assert config["rootfs"]["diff_ids"] == [base.layers[0].diff_id, own.diff_id]
    assert config["config"]["Entrypoint"] == ["/lambda-entrypoint.sh"]
    assert config["config"]["Cmd"] == ["app.handler"] and config["config"]["Env"] == ["A=1"]
    assert image.digest == "sha256:" + hashlib.sha256(image.manifest).hexdigest()
    assert oci.compose(base, [own], ["app.handler"], "x86_64").digest == image.digest
    with pytest.raises(oci.ImageError, match="for amd64, and the function runs on arm64"):
        oci.compose(base, [own], ["app.handler"], "arm64")


def test_an_index_gives_the_functions_platform():
    index = {"manifests": [
        {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "amd64"}},
    ]}  # fmt: skip
    assert oci.pick_platform(index, "x86_64") == "sha256:b"
    assert oci.pick_platform(index, "arm64") == "sha256:a"
    with pytest.raises(oci.ImageError, match="no linux/arm64"):
        oci.pick_platform({"manifests": index["manifests"][1:]}, "arm64")


@pytest.mark.parametrize("reference, parts", [
    ("public.ecr.aws/lambda/python:3.12", ("public.ecr.aws", "lambda/python", "3.12")),
    ("127.0.0.1:4566/public.ecr.aws/lambda/python:3.11",
     ("127.0.0.1:4566", "public.ecr.aws/lambda/python", "3.11")),
    ("1.dkr.ecr.us-east-1.amazonaws.com/repo@sha256:ab",
     ("1.dkr.ecr.us-east-1.amazonaws.com", "repo", "sha256:ab")),
    ("localhost:5000/repo", ("localhost:5000", "repo", "latest")),
])  # fmt: skip
def test_references(reference, parts):
    assert split_reference(reference) == parts


def test_a_reference_names_its_registry():
    with pytest.raises(oci.ImageError, match="does not name its registry"):
        split_reference("lambda/python:3.12")


def _layer_folder(tmp_path, name, entries):
    """A layer's tar of ``(name, bytes or None for a folder)``, unpacked as the local Lambda
    unpacks each layer: into a folder of its own, whiteouts kept."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for entry, content in entries:
            info = tarfile.TarInfo(entry)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    data.seek(0)
    folder = tmp_path / name
    folder.mkdir()
    with tarfile.open(fileobj=data) as tar:
        for member in tar:
            local_images._extract(tar, member, folder)
    return folder


def test_whiteouts_delete_what_lower_layers_put(tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    lower = _layer_folder(tmp_path, "lower", [
        ("a", None), ("a/gone.txt", b"1"), ("a/kept.txt", b"2"), ("b", None),
        ("b/old.txt", b"3"), ("c.txt", b"old"), ("d", None), ("d/e.txt", b"5")])  # fmt: skip
    # An opaque folder hides the lower layers' files, not its own layer's (in any order).
    upper = _layer_folder(tmp_path, "upper", [
        ("a/.wh.gone.txt", b""), ("b/new.txt", b"4"), ("b/.wh..wh..opq", b""),
        ("c.txt", b"new"), (".wh.d", b"")])  # fmt: skip
    for layer in (lower, upper):
        local_images._overlay(layer, rootfs)
    assert sorted(p.relative_to(rootfs).as_posix() for p in rootfs.rglob("*")) == [
        "a", "a/kept.txt", "b", "b/new.txt", "c.txt"]  # fmt: skip
    assert (rootfs / "c.txt").read_bytes() == b"new"
    assert (lower / "c.txt").read_bytes() == b"old"  # the layer itself is left as it was
    assert (lower / "a" / "gone.txt").exists() and (lower / "d" / "e.txt").exists()
