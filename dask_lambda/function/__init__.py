"""Everything that runs inside Lambda, and nothing else.

:mod:`.handler` (the entry point), :mod:`.protocol` (the wire format, signing, integrity),
:mod:`.storage` (the S3 spill store), :mod:`.allowlist` (restricted unpickling), :mod:`.errors` (a
task's exception as a bounded protocol entry), :mod:`.calls` (helpers tasks call), :mod:`.contract`
(the environment a function is deployed with) and :mod:`.dependencies` (an S3 archive of
dependencies, unpacked here on a cold start before anything imports them). This subpackage imports
nothing else of ``dask_lambda`` — no scheduler, cluster, CLI, emulator or ``distributed`` — and is
all that the deployment package ships of it (see :func:`dask_lambda.deploy.build.package_files`);
a test enforces the boundary. The client imports from here the pieces both sides share."""

import os as _os

from .contract import DEPENDENCIES as _DEPENDENCIES

if _os.environ.get(_DEPENDENCIES):  # set only in a function deployed with --deps-on-s3
    from .dependencies import mount as _mount

    _mount()
