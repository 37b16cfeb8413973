"""Settings: one typed object read once from arguments and dask.config (no Lambda)."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

import dask
import pytest
import yaml

import dask_lambda.settings as settings_module
from dask_lambda import limits
from dask_lambda.settings import Settings, checked, environment_variable, schema


def test_every_field_names_a_key_of_the_defaults():
    defaults = dask.config.get("lambda")
    for spec in fields(Settings):
        node = defaults
        for part in spec.metadata["key"].split("."):
            assert part in node, f"{spec.name}: lambda.{spec.metadata['key']} is not in lambda.yaml"
            node = node[part]


def test_values_are_converted_to_their_types():
    given = {"lambda.memory": "1024", "lambda.batch.target-seconds": "0.5",
             "lambda.memory-tiers": [4096, "2048", 4096], "lambda.escalate-memory": "true",
             "lambda.max-concurrency": 7}  # fmt: skip
    with dask.config.set(given):
        settings = Settings.from_config()
    assert settings.memory == 1024 and settings.target_seconds == 0.5
    assert settings.memory_tiers == (2048, 4096) and settings.escalate_memory is True
    assert settings.max_concurrency == 7


def test_arguments_override_the_config():
    with dask.config.set({"lambda.max-concurrency": 7}):
        assert Settings.from_config(max_concurrency=3).max_concurrency == 3
        assert Settings.from_config(max_concurrency=None).max_concurrency == 7


def test_environment_variables_reach_the_settings(monkeypatch):
    monkeypatch.setenv("DASK_LAMBDA__BATCH__MAX_TASKS", "17")
    monkeypatch.setenv("DASK_LAMBDA__INVOKE_CLIENT", "boto3")
    saved = copy.deepcopy(dask.config.config)
    try:
        dask.config.refresh()  # what a new process does with its environment
        settings = Settings.from_config()
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)
    assert (settings.max_tasks, settings.invoke_client) == (17, "boto3")


def test_concurrency_defaults_to_the_machine_locally_and_100_on_aws():
    assert Settings.from_config(local=False).max_concurrency == 100
    assert 2 <= Settings.from_config(local=True).max_concurrency <= 1024
    named = Settings.from_config(function_name="f", endpoint_url="https://lambda.example.com")
    assert named.max_concurrency == 100
    loopback = Settings.from_config(function_name="f", endpoint_url="http://127.0.0.1:4566")
    assert loopback.max_concurrency < 100


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"memory": "lots"}, "lambda.memory is 'lots' \\(the argument memory=\\): it must be a"
         " whole number from 128 to 10240"),
        ({"memory": -1}, f"from {limits.MIN_MEMORY_MB} to {limits.MAX_MEMORY_MB}"),
        ({"memory_tiers": [-5]}, "lambda.memory-tiers is \\[-5\\]"),
        ({"memory_tiers": [20_000]}, "a list of whole numbers from 128 to 10240"),
        ({"timeout": 0}, f"from 1 to {limits.MAX_TIMEOUT_SECONDS}"),
        ({"max_concurrency": 0}, "lambda.max-concurrency is 0 .*of at least 1, or null"),
        ({"max_tasks": 0}, "lambda.batch.max-tasks is 0"),
        ({"inline_limit": -1}, "lambda.spill.inline-limit is -1"),
        ({"target_seconds": -1}, "lambda.batch.target-seconds is -1"),
        ({"invoke_client": "curl"}, "lambda.invoke-client is 'curl' .*one of lean, boto3"),
        ({"packages": "pandas"}, "lambda.packages is 'pandas' .*a list of strings"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_key_the_argument_and_what_is_valid(overrides, says):
    with pytest.raises(ValueError, match=says) as info:
        Settings.from_config(**overrides)
    assert "DASK_LAMBDA__" in str(info.value)  # and the environment variable


def test_a_bad_value_from_the_environment_names_the_variable():
    with dask.config.set({"lambda.batch.max-tasks": "many"}), pytest.raises(
        ValueError, match="DASK_LAMBDA__BATCH__MAX_TASKS"
    ):
        Settings.from_config()


def test_settings_outside_the_cluster_are_checked_too():
    """A value the cluster itself never reads (the local Lambda's) is refused when the cluster
    is created, not when the local Lambda reads it."""
    for key, bad in (("api-timeout", "soon"), ("local.isolation", "bwrap"),
                     ("pricing.request", "free")):  # fmt: skip
        with dask.config.set({f"lambda.{key}": bad}), pytest.raises(
            ValueError, match=environment_variable(key)
        ):
            Settings.from_config()


def test_a_cluster_with_a_bad_setting_fails_before_it_starts_anything():
    from dask_lambda import LambdaCluster

    with pytest.raises(ValueError, match="LambdaCluster\\(memory=...\\)"):
        LambdaCluster(memory="lots")
    with dask.config.set({"lambda.max-concurrency": "abc"}), pytest.raises(
        ValueError, match="DASK_LAMBDA__MAX_CONCURRENCY"
    ):
        LambdaCluster()


def test_the_schema_covers_every_key_of_the_defaults():
    """As dask's test_schema_is_complete: lambda.yaml and lambda-schema.yaml name the same keys,
    and every default is valid."""

    def leaves(node, prefix=""):
        for name, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    defaults = yaml.safe_load(Path(settings_module.__file__).with_name("lambda.yaml").read_text())
    assert set(leaves(defaults["lambda"])) == set(schema())
    for key in schema():
        checked(key, dask.config.get(f"lambda.{key}"))  # the defaults pass
        assert schema()[key]["description"], key


def test_unknown_settings_are_refused():
    with pytest.raises(TypeError, match="max_task"):
        Settings.from_config(max_task=3)


def test_the_schema_holds_lambdas_limits():
    """The schema's ranges for what Lambda limits are limits.py's numbers, not other ones."""
    rules = schema()
    assert (rules["memory"]["min"], rules["memory"]["max"]) == (
        limits.MIN_MEMORY_MB, limits.MAX_MEMORY_MB)  # fmt: skip
    assert (rules["memory-tiers"]["min"], rules["memory-tiers"]["max"]) == (
        limits.MIN_MEMORY_MB, limits.MAX_MEMORY_MB)  # fmt: skip
    assert rules["timeout"]["max"] == limits.MAX_TIMEOUT_SECONDS


def test_the_configuration_reference_is_generated_from_the_schema():
    from pathlib import Path

    from dask_lambda.settings import reference

    docs = Path(__file__).parents[2] / "docs" / "configuration.rst"
    assert reference() in docs.read_text(), "regenerate it: python -m dask_lambda.settings"
