"""Unpacking the dependency archive on a cold start (``dependencies.extract``): every file where
the archive says, on several threads, and nothing outside the target."""

from __future__ import annotations

import os
import zipfile

import pytest

from dask_lambda.function.dependencies import DependencyError, extract


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
