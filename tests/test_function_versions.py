"""Published versions and aliases on the local Lambda, as on AWS: a version keeps the code it
was published with, ``Qualifier`` picks what runs, and SnapStart settings AWS refuses are
refused (the restore path itself is tested under Python 3.12: test_snapstart_restore.py)."""

from __future__ import annotations

import json

import pytest
from conftest import unique, zip_files

ANSWER = """
def handler(event, context):
    return {{"code": {code!r}, "version": context.function_version}}
"""


def _code(label: str) -> bytes:
    return zip_files({"answer.py": ANSWER.format(code=label)})


def _invoke(lam, name: str, qualifier: str | None = None) -> dict:
    extra = {"Qualifier": qualifier} if qualifier else {}
    response = lam.invoke(FunctionName=name, Payload=b"{}", **extra)
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read())


def test_each_version_runs_the_code_it_was_published_with(local, deploy):
    lam = local.client("lambda")
    name = deploy("answer.handler", code=_code("first"))
    assert lam.publish_version(FunctionName=name)["Version"] == "1"
    lam.update_function_code(FunctionName=name, ZipFile=_code("second"))
    lam.get_waiter("function_updated_v2").wait(FunctionName=name)
    assert lam.publish_version(FunctionName=name)["Version"] == "2"
    lam.update_function_code(FunctionName=name, ZipFile=_code("unpublished"))
    lam.get_waiter("function_updated_v2").wait(FunctionName=name)
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")

    assert _invoke(lam, name, "1") == {"code": "first", "version": "1"}
    assert _invoke(lam, name, "2") == {"code": "second", "version": "2"}
    assert _invoke(lam, f"{name}:2") == {"code": "second", "version": "2"}
    assert _invoke(lam, name) == {"code": "unpublished", "version": "$LATEST"}
    assert _invoke(lam, name, "live") == {"code": "first", "version": "1"}
    lam.update_alias(FunctionName=name, Name="live", FunctionVersion="2")
    assert _invoke(lam, name, "live") == {"code": "second", "version": "2"}
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName=name, Qualifier="7", Payload=b"{}")


@pytest.mark.parametrize(
    ("config", "refusal"),
    [
        ({"Runtime": "python3.11"}, "runtime python3.11: use python3.12 or later"),
        ({"Runtime": "python3.12", "EphemeralStorage": {"Size": 1024}}, "up to 512 MB, not 1024"),
        ({"Runtime": "python3.12", "SnapStart": {"ApplyOn": "Always"}}, "ApplyOn must be one of"),
    ],
)
def test_snapstart_settings_aws_refuses_are_refused(local, role_arn, config, refusal):
    lam = local.client("lambda")
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match=refusal):
        lam.create_function(
            FunctionName=unique("snap"), Role=role_arn, Handler="answer.handler",
            Code={"ZipFile": _code("x")},
            **{"SnapStart": {"ApplyOn": "PublishedVersions"}, **config},
        )  # fmt: skip


def test_snapstart_is_reported_and_cannot_be_switched_on_for_an_older_runtime(local, deploy):
    lam = local.client("lambda")
    name = deploy("answer.handler", code=_code("x"))  # python3.11
    with pytest.raises(lam.exceptions.InvalidParameterValueException, match="python3.12"):
        lam.update_function_configuration(FunctionName=name,
                                          SnapStart={"ApplyOn": "PublishedVersions"})  # fmt: skip
    assert lam.get_function_configuration(FunctionName=name)["SnapStart"] == {
        "ApplyOn": "None", "OptimizationStatus": "Off"}  # fmt: skip
