"""Unpacking the dependency archive on a cold start (``dependencies.stream_extract``, as its
bytes arrive): every file where the archive says, on several threads, whatever the chunks; and
nothing outside the target, nothing more than the deployed size, nothing kept of a damaged one."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile

import pytest

from dask_lambda.function.dependencies import DependencyError, stream_extract


def extract(archive, target, threads=None):
    """Stream the zip file ``archive`` into ``target``, a megabyte at a time."""
    with open(archive, "rb") as f:
        stream_extract(iter(lambda: f.read(1 << 20), b""), target, threads=threads)


def _archive(path, files: dict[str, bytes], executable: tuple[str, ...] = ()) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o755 if name in executable else 0o644) << 16
            archive.writestr(info, data)


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_every_file_lands_where_the_archive_says(tmp_path, threads):
    files = {f"pkg{i % 3}/sub{i % 2}/m{i}.py": os.urandom(i * 997) for i in range(40)}
    files["pkg0/__pycache__/m0.cpython-311.pyc"] = b"bytecode"
    files["lib/native.so"] = os.urandom(300_000)
    _archive(tmp_path / "deps.zip", files, executable=("lib/native.so",))
    extract(tmp_path / "deps.zip", tmp_path / "site", threads=threads)
    found = {p.relative_to(tmp_path / "site").as_posix(): p.read_bytes()
             for p in (tmp_path / "site").rglob("*") if p.is_file()}  # fmt: skip
    assert found == files
    assert os.access(tmp_path / "site" / "lib" / "native.so", os.X_OK)


@pytest.mark.parametrize("name", ["../outside.py", "pkg/../../outside.py", "/etc/outside.py"])
def test_a_name_outside_the_target_is_refused_before_anything_is_written(tmp_path, name):
    _archive(tmp_path / "deps.zip", {"pkg/ok.py": b"", name: b"evil"})
    with pytest.raises(DependencyError, match="refused"):
        extract(tmp_path / "deps.zip", tmp_path / "site")
    assert not (tmp_path / "outside.py").exists() and not (tmp_path / "site").exists()


def _found(site) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*") if p.is_file()}


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_streamed_in_any_chunks_it_unpacks_the_same_and_gives_the_digest(tmp_path, chunk):
    files = {f"pkg/m{i}.py": os.urandom(i * 131) + b"x" * 5000 for i in range(12)}
    files["pkg/data/"] = b""  # a folder entry
    _archive(tmp_path / "deps.zip", files)
    data = (tmp_path / "deps.zip").read_bytes()
    chunks = (data[i : i + chunk] for i in range(0, len(data), chunk))
    digest, size = stream_extract(chunks, tmp_path / "site", threads=2)
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert _found(tmp_path / "site") == {k: v for k, v in files.items() if not k.endswith("/")}
    assert (tmp_path / "site" / "pkg" / "data").is_dir()


def test_a_damaged_member_is_refused_and_nothing_of_it_kept(tmp_path):
    _archive(tmp_path / "deps.zip", {"pkg/a.py": b"a" * 100_000, "pkg/b.py": b"b" * 100_000})
    data = bytearray((tmp_path / "deps.zip").read_bytes())
    data[60:80] = os.urandom(20)  # inside a.py's deflated bytes
    with pytest.raises(DependencyError, match="refused"):
        stream_extract([bytes(data)], tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_more_than_the_deployed_unpacked_size_is_refused(tmp_path):
    _archive(tmp_path / "deps.zip", {"pkg/big.bin": b"\0" * 1_000_000, "pkg/c.py": b"c"})
    data = (tmp_path / "deps.zip").read_bytes()
    with pytest.raises(DependencyError, match="more than the deployed 1000000 bytes"):
        stream_extract([data], tmp_path / "site", unpacked_limit=1_000_000)
    assert not (tmp_path / "site").exists()
    stream_extract([data], tmp_path / "site", unpacked_limit=1_000_001)


def test_an_entry_without_sizes_in_its_header_is_refused(tmp_path):
    class Unseekable(io.RawIOBase):  # zipfile then writes data descriptors
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.data += b
            return len(b)

    out = Unseekable()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pkg/a.py", b"a" * 1000)
    with pytest.raises(DependencyError, match="no sizes in its header"):
        stream_extract([bytes(out.data)], tmp_path / "site")
