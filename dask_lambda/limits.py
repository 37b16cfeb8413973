"""AWS Lambda's limits, as named numbers: the one place the client and the local Lambda read them.

From the Lambda quotas page (docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
The function side (:mod:`.function`) has its own copies where it needs one: it imports nothing of
the client.
"""

from __future__ import annotations

MIN_MEMORY_MB = 128
MAX_MEMORY_MB = 10_240
MAX_TIMEOUT_SECONDS = 900
MIN_EPHEMERAL_MB = 512
MAX_EPHEMERAL_MB = 10_240
# A synchronous invocation's request and response, each (the envelope, after base64).
SYNC_PAYLOAD_BYTES = 6_291_456
# Code and layers together, unzipped.
UNZIPPED_PACKAGE_BYTES = 262_144_000  # 250 MiB
# A zip uploaded with the API call itself; larger ones go through S3.
DIRECT_UPLOAD_BYTES = 52_428_800  # 50 MiB
# A container image's layers, uncompressed.
IMAGE_UNPACKED_BYTES = 10 * 1024**3  # 10 GiB
