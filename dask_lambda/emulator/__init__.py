"""The embedded local Lambda: AWS Lambda, S3 and IAM on 127.0.0.1, for laptops and CI.

``LocalLambda`` is the client's handle; the server side lives in :mod:`.server`,
:mod:`.invoke`, :mod:`.runtimes`, :mod:`.runtime_api` and :mod:`.code_store`.
"""

from .embedded import LocalLambda, LocalLambdaError

__all__ = ["LocalLambda", "LocalLambdaError"]
