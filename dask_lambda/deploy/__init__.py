"""Putting a function on Lambda: building its package, provisioning it (role, key,
tiers), managing what dask-lambda created, and checking a deployed function's versions.
"""
