"""Bytecode in every package (issue 27, item 1): each shipped ``.py`` has an unchecked-hash pyc
beside it, for the runtime's Python, so a cold start on a read-only ``/var/task`` compiles
nothing; the local Lambda's side of it is in ``tests/test_cold_start.py``."""

from __future__ import annotations

import importlib.util
import io
import marshal
import sys
import zipfile

from dask_lambda.deploy.build import BuildSpec, build, is_tests_file

TAG = sys.implementation.cache_tag
RUNTIME = f"{sys.version_info.major}.{sys.version_info.minor}"


def _names(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return {name: opened.read(name) for name in opened.namelist()}


def _pyc_name(source_name: str) -> str:
    folder, _, stem = source_name[:-3].rpartition("/")
    return f"{folder}/__pycache__/{stem}.{TAG}.pyc" if folder else f"__pycache__/{stem}.{TAG}.pyc"


def _assert_every_module_has_unchecked_bytecode(files: dict[str, bytes]) -> int:
    sources = [n for n in files if n.endswith(".py") and "/tests/" not in n]
    checked = 0
    for name in sources:
        pyc = files.get(_pyc_name(name))
        if pyc is None:
            try:
                compile(files[name], name, "exec", dont_inherit=True)
            except (SyntaxError, ValueError):
                continue  # a template or a file for another Python: its package never imports it
            raise AssertionError(f"{name} ships without bytecode")
        assert pyc[:4] == importlib.util.MAGIC_NUMBER, name
        assert int.from_bytes(pyc[4:8], "little") == 0b01, f"{name}: not unchecked hash-based"
        assert pyc[8:16] == importlib.util.source_hash(files[name]), f"{name}: another source's"
        checked += 1
    return checked


def test_the_local_package_ships_bytecode_for_every_module(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    user = tmp_path / "work"
    user.mkdir()
    # Never imported on this client, so pip wrote no bytecode for it: compiled by the build.
    (user / "fresh_module.py").write_text("ANSWER = 6 * 7\n")
    built = build(BuildSpec(paths=[user], from_installed=True, deps_on_s3=False))
    files = _names(built.zip_bytes)
    assert _assert_every_module_has_unchecked_bytecode(files) > 500  # dask, numpy, dask_lambda
    assert "dask_lambda/function/__pycache__/handler." + TAG + ".pyc" in files
    pyc = files[f"work/__pycache__/fresh_module.{TAG}.pyc"]
    namespace: dict = {}
    exec(marshal.loads(pyc[16:]), namespace)
    assert namespace["ANSWER"] == 42
    assert not [n for n in files if "/tests/" in n and n.endswith(".pyc")]
    # What bytecode adds is counted against Lambda's 250 MB unzipped.
    assert built.unpacked_size == sum(len(data) for data in files.values())


def test_the_dependency_archive_for_s3_ships_bytecode_too(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    built = build(BuildSpec(from_installed=True, deps_on_s3=True))
    assert built.dependencies_zip
    names = _names(built.dependencies_zip)
    assert _assert_every_module_has_unchecked_bytecode(names) > 500
    assert _assert_every_module_has_unchecked_bytecode(_names(built.zip_bytes)) > 5
    # Packages' tests folders ship by default (task code may live there: dask's own suites)...
    assert [name for name in names if name.startswith("numpy/_core/tests/")]
    # ... and stay out of the archive every cold start unpacks when asked.
    said: list[str] = []
    trimmed = build(BuildSpec(from_installed=True, deps_on_s3=True, ship_tests=False),
                    progress=said.append)  # fmt: skip
    assert not [name for name in _names(trimmed.dependencies_zip) if is_tests_file(name)]
    assert any("leaving out" in line and "tests folders" in line for line in said)


def test_another_python_gets_no_bytecode_and_is_told_why(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    said: list[str] = []
    other = "3.99"
    built = build(BuildSpec(from_installed=True, python_version=other), progress=said.append)
    assert not [n for n in _names(built.zip_bytes) if n.endswith(".pyc")]
    assert any(f"python{other} is not this client's Python" in line for line in said)
