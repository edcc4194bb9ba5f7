#!/usr/bin/env bash
# Runs podman or docker, whichever exists, with the settings this kind of
# machine needs for podman (docs/kubeflow.md): runc (crun fails on a hybrid
# cgroup layout), vfs storage, and no rlimit changes inside containers.
set -euo pipefail
if command -v podman >/dev/null; then
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    export CONTAINERS_CONF=${XDG_CONFIG_HOME:-$HOME/.config}/tfx-transfer/containers.conf
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF"
  fi
  exec podman --storage-driver vfs --runtime runc "$@"
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  exec docker "$@"
fi
echo "neither podman nor a running docker engine is available" >&2
exit 1
