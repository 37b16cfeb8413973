"""Everything that runs inside Lambda, and nothing else.

:mod:`.handler` (the entry point), :mod:`.protocol` (the wire format, signing, integrity),
:mod:`.storage` (the S3 spill store), :mod:`.allowlist` (restricted unpickling), :mod:`.errors`
(a task's exception as a bounded protocol entry), :mod:`.calls` (helpers tasks call) and
:mod:`.contract` (the environment a function is deployed with). This subpackage imports nothing
else of ``dask_lambda`` — no scheduler, cluster, CLI, emulator or ``distributed`` — and is all
that the deployment package ships of it (see :func:`dask_lambda.build.package_files`); a test
enforces the boundary. The client imports from here the pieces both sides share.
"""
