#!/usr/bin/env bash
# Creates DIR/triton and DIR/kserve, one virtualenv per standard client (their pins clash with the project's
# and with each other's), for tests/serve/test_serve_clients.py: run it, then export SBNN_CLIENT_VENVS=DIR.
set -euo pipefail
if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$1"
mkdir -p "$dir"
for client in triton kserve; do
    python3 -m venv "$dir/$client"
    "$dir/$client/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$dir/$client/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-$client.txt"
done
echo "client venvs ready: export SBNN_CLIENT_VENVS=$(cd "$dir" && pwd)"
