"""dask-lambda's settings: defaults from ``lambda.yaml`` under the ``lambda`` key of dask.config.

Every setting can be overridden with ``dask.config.set({"lambda.max-concurrency": 8})``, a YAML
file in dask's config folders, or an environment variable such as
``DASK_LAMBDA__MAX_CONCURRENCY=8``. Nothing is written to the user's config folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

DEFAULTS_FILE = Path(__file__).with_name("lambda.yaml")

with DEFAULTS_FILE.open() as _f:
    dask.config.update_defaults(yaml.safe_load(_f))


def setting(name: str, override_with: Any = None) -> Any:
    """The ``lambda.<name>`` setting, or ``override_with`` if it is not None (as dask.config)."""
    return dask.config.get(f"lambda.{name}", override_with=override_with)


def function_prefix(function_name: str) -> str:
    """The default spill prefix of a function: ``<lambda.prefix>/<function name>``, so functions
    sharing a bucket never share objects (each role grants only its own prefix)."""
    if function_name.startswith("arn:"):  # arn:aws:lambda:region:account:function:name[:version]
        function_name = function_name.split(":")[6]
    return f"{str(setting('prefix')).strip('/')}/{function_name}"
