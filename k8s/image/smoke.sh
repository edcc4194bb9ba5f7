#!/usr/bin/env bash
# Runs a command in the image: k8s/image/smoke.sh IMAGE COMMAND...
# With podman, on the image's own root directory under a throw-away overlay
# (what `submit --local --engine podman` does), since `podman run IMAGE` on
# vfs storage first copies the whole image (minutes for 4 GB).
set -euo pipefail
image=$1; shift
engine=$(dirname "$0")/engine.sh
if command -v podman >/dev/null; then
  env_args=()
  while IFS= read -r e; do [ -n "$e" ] && env_args+=(-e "$e"); done \
    < <("$engine" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image")
  user=$("$engine" image inspect --format "{{.Config.User}}" "$image")
  workdir=$("$engine" image inspect --format "{{.Config.WorkingDir}}" "$image")
  rootfs=$("$engine" image mount "$image")
  trap '"$engine" image unmount "$image" >/dev/null' EXIT
  "$engine" run --rm --network none ${user:+--user "$user"} -w "${workdir:-/}" "${env_args[@]}" --rootfs "$rootfs:O" "$@"
else
  "$engine" run --rm "$image" "$@"
fi
