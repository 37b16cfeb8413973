"""How any process reaches an embedded local Lambda: its endpoint, region and credentials."""

from __future__ import annotations

DEFAULT_REGION = "us-east-1"


def service_env(
    endpoint_url: str, region: str = DEFAULT_REGION, credentials: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment variables that point boto3 (in any process) at ``endpoint_url``.

    ``credentials`` (``AWS_ACCESS_KEY_ID``, ...) are added when given: the local Lambda enforces
    IAM, so a caller needs a key it knows (the admin's for clients, a role's for runtimes).
    """
    env = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "AWS_ENDPOINT_URL_LAMBDA": endpoint_url,
        "AWS_ENDPOINT_URL_IAM": endpoint_url,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }
    return {**env, **(credentials or {})}
