# Sourced by ci/test and ci/demo: create .venv with python3 if missing, install the package with
# the extras named in $1. Safe to rerun: an up-to-date .venv costs a few seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >"$log" 2>&1 || { cat "$log"; exit 1; }
fi
echo "Installing dask-lambda[$1] into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$1]" >"$log" 2>&1 \
    || { cat "$log"; exit 1; }
