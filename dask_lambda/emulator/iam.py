"""Identity in the embedded local Lambda: an admin for the client, roles for the runtimes.

AWS checks every request against the caller's IAM policies; so does the local Lambda, through
moto's own IAM authorisation (``INITIAL_NO_AUTH_ACTION_COUNT``, see moto's
``core/authorization.py``):

- At start the server creates one IAM user, ``dask-lambda-local-admin``, allowed everything, and
  hands its access key to the client (:class:`~.embedded.LocalLambda`, ``dask-lambda local``).
  From then on moto refuses unsigned requests, unknown keys and actions the caller's policies do
  not allow, as AWS would.
- Each runtime gets temporary credentials of its function's execution role, as Lambda gives them
  (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``): the server, standing in
  for the Lambda service, assumes the role through STS. A task that touches a bucket its role may
  not touch gets ``AccessDenied``.
- moto authorises SSM actions against the resource ``*`` only, so a policy naming one parameter
  (what dask-lambda's role grants for its signing key) would never match; :func:`enforce` gives
  SSM the parameter's ARN when it checks an SSM request's action. CloudWatch Logs are answered
  by this server (:mod:`.logs`) and checked by :func:`authorize`.
- moto checks the signature of a body-less REST request (a ``GET`` such as Lambda's
  ``GetFunctionConfiguration``) against its query or, without one, its *headers* taken as form
  data (its ``setup_class`` fills ``data`` with them), so every such request would fail;
  :func:`enforce` has normal actions checked by :class:`_IAMRequest`, which signs what was sent.

Requests the server makes to moto on its own behalf (reading a function's configuration, its code
from S3) are signed with the admin key (:func:`signed_headers`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ADMIN_USER = "dask-lambda-local-admin"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
ACCOUNT_ID = "123456789012"  # moto's default account
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def env(self) -> dict[str, str]:
        """Environment variables boto3's credential chain reads."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


def create_admin(iam_call) -> Credentials:
    """Create the admin user through moto's IAM API (``iam_call(params) -> xml``) and its key."""
    import re

    iam_call({"Action": "CreateUser", "UserName": ADMIN_USER})
    iam_call(
        {
            "Action": "PutUserPolicy",
            "UserName": ADMIN_USER,
            "PolicyName": "everything",
            "PolicyDocument": json.dumps(ADMIN_POLICY),
        }
    )
    xml = iam_call({"Action": "CreateAccessKey", "UserName": ADMIN_USER})
    key = re.search(r"<AccessKeyId>([^<]+)</AccessKeyId>", xml)
    secret = re.search(r"<SecretAccessKey>([^<]+)</SecretAccessKey>", xml)
    if not (key and secret):
        raise RuntimeError(f"moto did not create an access key for the local admin: {xml[:500]}")
    return Credentials(key[1], secret[1])


def enforce() -> None:
    """From now on, moto checks every request's signature and the caller's policies."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = _normal_action
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0


def _normal_action(self: Any, resource: str = "*") -> None:
    # Told by class, not by patching SSM's response class: importing moto.ssm imports all of
    # moto.ec2, a second of the server's start.
    if resource == "*" and type(self).__module__ == "moto.ssm.responses":
        resource = _ssm_resource(self)
    self._authenticate_and_authorize_action(_iam_request_class(), resource)


def _iam_request_class() -> type:
    global _IAMRequest
    if _IAMRequest is None:
        from moto.iam.access_control import IAMRequest

        class _IAMRequest(IAMRequest):  # type: ignore[no-redef]
            """moto's IAM check, with the signed payload of a body-less GET or DELETE empty."""

            def __init__(self, *, body: bytes, data: Any, method: str, **kwargs: Any):
                if not body and method in ("GET", "HEAD", "DELETE"):
                    data = {}
                super().__init__(body=body, data=data, method=method, **kwargs)

    return _IAMRequest


_IAMRequest: type | None = None


def _ssm_resource(response: Any) -> str:
    """The ARN of the parameter an SSM request names (``*`` for requests naming none)."""
    try:
        name = json.loads(response.body or "{}").get("Name")
    except ValueError:
        name = None
    if not isinstance(name, str) or not name:
        return "*"
    path = name if name.startswith("/") else "/" + name
    return f"arn:aws:ssm:{response.region}:{response.current_account}:parameter{path}"


def assume_role(role_arn: str, session_name: str, region: str) -> Credentials:
    """Temporary credentials of ``role_arn``, as the Lambda service obtains them.

    The service is not an IAM principal of the account, so this calls moto's STS model directly
    rather than its API (which would check the trust policy against a caller).
    """
    from moto.sts.models import sts_backends

    role = sts_backends[ACCOUNT_ID]["aws"].assume_role(
        region_name=region,
        role_session_name=session_name[:64],
        role_arn=role_arn,
        policy=None,
        duration=SESSION_SECONDS,
        external_id=None,
    )
    return Credentials(role.access_key_id, role.secret_access_key, role.session_token)


def signed_headers(
    credentials: Credentials,
    service: str,
    region: str,
    method: str,
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """SigV4 headers for a request the server makes to moto as ``credentials``."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    signer(
        BotoCredentials(
            credentials.access_key_id, credentials.secret_access_key, credentials.session_token
        ),
        service,
        region,
    ).add_auth(request)
    return dict(request.headers.items())


def _iam_request(environ: dict[str, Any], body: bytes, action: str):
    """moto's ``IAMRequest`` for a request this server answers itself: its headers and the path
    as sent (still percent-encoded, as it was signed), not werkzeug's decoded one."""
    from moto.iam.access_control import IAMRequest

    headers = {
        key[5:].replace("_", "-").title(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if "Content-Type" not in headers and environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    path = environ.get("RAW_URI", "").split("?", 1)[0] or environ.get("PATH_INFO", "/")
    if environ.get("QUERY_STRING"):
        path += "?" + environ["QUERY_STRING"]
    return IAMRequest(account_id=ACCOUNT_ID, method=environ["REQUEST_METHOD"], path=path,
                      data={}, body=body, headers=headers, action=action)  # fmt: skip


def authorize(
    environ: dict[str, Any], body: bytes, action: str, resource: str
) -> tuple[str, str] | None:
    """Check a request this server answers itself (not moto) as moto checks its own.

    Returns ``None`` when allowed, else ``(error code, message)``.
    """
    from moto import settings
    from moto.core.exceptions import _RESTError as RESTError

    if settings.INITIAL_NO_AUTH_ACTION_COUNT != 0:
        return None
    if "HTTP_AUTHORIZATION" not in environ:
        return "MissingAuthenticationToken", "Request is missing Authentication Token"
    try:
        request = _iam_request(environ, body, action)
        request.check_signature()
        request.check_action_permitted(resource)
    except RESTError as e:
        return e.error_type, e.message
    return None


def is_admin(environ: dict[str, Any], body: bytes, admin: Credentials) -> bool:
    """True if the request carries a valid SigV4 signature made with the admin's own key (the
    local Lambda's internal routes and moto's ``/moto-api`` answer nobody else)."""
    from moto.core.exceptions import _RESTError as RESTError

    if f"Credential={admin.access_key_id}/" not in environ.get("HTTP_AUTHORIZATION", ""):
        return False
    try:
        _iam_request(environ, body, "").check_signature()
    except RESTError:
        return False
    return True
