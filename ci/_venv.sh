# Sourced by ci/test and ci/demo: create the virtual environment $VENV (default .venv) with
# $PYTHON (default python3) if missing, install the package with the extras named in $1.
# Safe to rerun: an up-to-date environment costs a few seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >"$log" 2>&1 || { cat "$log"; exit 1; }
fi
echo "Installing dask-lambda[$1] into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$1]" >"$log" 2>&1 \
    || { cat "$log"; exit 1; }
