#!/usr/bin/env bash
# Run exitrec from its cached virtualenv (built on first use by infra/venv.sh).
#   bash infra/exitrec.sh demo          the demo on embedded defaults (local Kafka, embedded Qdrant)
#   bash infra/exitrec.sh test          ruff + the whole pytest suite (starts its own Kafka broker)
#   bash infra/exitrec.sh <command>     any other `exitrec` command, e.g. `kafka up`, `replay`, `train-graph`
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$(bash "$repo/infra/venv.sh")
export PATH="$venv/bin:$PATH"
cd "$repo"
if [ "${1:-}" = "test" ]; then
    shift
    exitrec kafka fetch >/dev/null  # resolve the broker's jars once (cached outside the clone)
    ruff check .
    set +e
    python -m pytest "$@"
    status=$?
    set -e
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests: that is a failure here" >&2
        exit 1
    fi
    exit "$status"
fi
exec exitrec "$@"
