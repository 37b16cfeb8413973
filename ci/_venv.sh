# Sourced by ci/test and ci/demo: create .venv with python3 if missing, install the package.
# Safe to rerun: an up-to-date .venv costs a few seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$1]" 2>&1 \
    | grep -v -e "^WARNING: Location" -e "is ignored: it is neither" || true
