"""Settings: one typed object read once from arguments and dask.config (no Lambda)."""

from __future__ import annotations

import copy
from dataclasses import fields

import dask
import pytest

from dask_lambda import limits
from dask_lambda.settings import Settings


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
        ({"memory": "lots"}, "lambda.memory is 'lots', which is not a whole number"),
        ({"memory": 64}, f"Lambda allows {limits.MIN_MEMORY_MB} to {limits.MAX_MEMORY_MB} MB"),
        ({"memory_tiers": [20_000]}, "lambda.memory-tiers is 20000 MB"),
        ({"timeout": 901}, f"1 to {limits.MAX_TIMEOUT_SECONDS} s"),
        ({"max_concurrency": 0}, "max_concurrency must be at least 1"),
        ({"invoke_client": "curl"}, "lambda.invoke-client is 'curl': use one of lean, boto3"),
    ],
)
def test_a_bad_value_names_its_key_and_the_fix(overrides, says):
    with pytest.raises(ValueError, match=says):
        Settings.from_config(**overrides)


def test_a_bad_value_from_the_environment_names_the_variable():
    with dask.config.set({"lambda.batch.max-tasks": "many"}), pytest.raises(
        ValueError, match="DASK_LAMBDA__BATCH__MAX_TASKS"
    ):
        Settings.from_config()


def test_unknown_settings_are_refused():
    with pytest.raises(TypeError, match="max_task"):
        Settings.from_config(max_task=3)
