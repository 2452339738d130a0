#!/usr/bin/env bash
# Create the peers' own virtual environment, /work/main/.venv-peers (never eaq's .venv):
# torch 2.14.1 + torchvision 0.29.1 from pip's configured index, eaq itself (editable), then
# the peer toolkits pinned in peers/requirements.txt. Peers that cannot install or import with
# torch 2.14.1 are left out of requirements.txt; peers/README.md records why.
# Usage: bash peers/setup.sh   (rerunnable; reuses the venv if it exists)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-peers"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" "torch==2.14.1" "torchvision==0.29.1"
"${pip[@]}" -e "$root"
# The peers must never move torch: the pin rides along with every install.
"${pip[@]}" -r "$root/peers/requirements.txt" "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/python" "$root/peers/run.py" --versions
