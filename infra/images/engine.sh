#!/usr/bin/env bash
# Make a Docker engine answer on this machine, for the local images (infra/images/build.py), docker-compose.yml
# and the container tests (tests/test_docker_services.py, tests/test_compose.py).
#
# Installs Debian's docker.io, docker-compose (1.29) and debootstrap when absent (apt-get, as root), then starts
# dockerd when no engine answers: the overlay2 storage driver first, vfs where overlay2 cannot mount. No registry
# is needed: every image is built locally. Exits non-zero with one line naming the reason when it cannot; the
# container tests then skip with the engine's own reason.
set -uo pipefail
log=${TMPDIR:-/tmp}/exitrec-dockerd.log
answers() { docker info >/dev/null 2>&1; }
root() { [ "$(id -u)" -eq 0 ]; }

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    if ! root; then
        echo "engine.sh: ${need[*]} not installed and not root: install them with apt-get to run the container tests" >&2
        exit 1
    fi
    if ! apt-get install -y -q "${need[@]}" >"$log.apt" 2>&1; then
        apt-get update -q >>"$log.apt" 2>&1
        apt-get install -y -q "${need[@]}" >>"$log.apt" 2>&1 \
            || { echo "engine.sh: apt-get install ${need[*]} failed: see $log.apt" >&2; exit 1; }
    fi
fi
answers && exit 0
root || { echo "engine.sh: no Docker engine answers, and starting dockerd needs root" >&2; exit 1; }
for driver in overlay2 vfs; do
    setsid nohup dockerd --storage-driver="$driver" >"$log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 60); do
        if answers; then
            echo "engine.sh: dockerd started (storage driver $driver, log $log)" >&2
            exit 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
done
echo "engine.sh: dockerd did not start: $(grep -m1 -iE 'level=(fatal|error)' "$log" || tail -1 "$log")" >&2
exit 1
