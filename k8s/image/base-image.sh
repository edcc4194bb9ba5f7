#!/usr/bin/env bash
# A local base image for the Dockerfile (BASE_IMAGE) where no registry can be
# reached: a Debian bookworm rootfs from Debian's packages, this machine's
# Python 3.10 build copied at the same prefix (its rpath expects it), nothing
# else. The project and its pinned dependencies go in by the Dockerfile, from
# a wheelhouse downloaded on the host (k8s/image/wheelhouse.sh).
#
#   k8s/image/base-image.sh [TAG]      (root; needs debootstrap and podman or docker)
set -euo pipefail
TAG=${1:-localhost/tfx-transfer-base:py3.10}
PY_PREFIX=${PY_PREFIX:-$(dirname "$(dirname "$(readlink -f "${PY310:-$(PYENV_VERSION=3.10.13 pyenv which python3.10 2>/dev/null || command -v python3.10)}")")")}
SUITE=${SUITE:-bookworm}
if [ -z "${MIRROR:-}" ]; then  # the Debian mirror apt uses here
  MIRROR=$(cat /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null \
           | grep -oE '^(URIs:|deb) +https?://[^ ]+/debian$' | awk '{print $2; exit}' || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
ENGINE=${ENGINE:-$(dirname "$0")/engine.sh}

for tool in debootstrap tar; do
  command -v $tool >/dev/null || { echo "base-image: $tool is missing (apt-get install -y debootstrap)" >&2; exit 1; }
done
[ -x "$PY_PREFIX/bin/python3.10" ] || { echo "base-image: no Python 3.10 at $PY_PREFIX (set PY310)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/tfx-transfer-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
# libgomp1: TensorFlow's and scikit-learn's OpenMP; the rest: what CPython's
# extension modules link against (ssl, sqlite3, ctypes, lzma, bz2, readline);
# passwd: useradd, for the Dockerfile's unprivileged user.
debootstrap --variant=minbase \
  --include=libssl3,libsqlite3-0,libffi8,zlib1g,libbz2-1.0,liblzma5,libreadline8,libncursesw6,libgomp1,ca-certificates,passwd \
  "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
mkdir -p "$rootfs$PY_PREFIX"
cp -a "$PY_PREFIX/." "$rootfs$PY_PREFIX/"
# Packages the host installed into its own interpreter are not the image's.
find "$rootfs$PY_PREFIX/lib/python3.10/site-packages" -mindepth 1 -maxdepth 1 \
  ! -name 'pip*' ! -name 'setuptools*' ! -name 'pkg_resources' ! -name '_distutils_hack' \
  ! -name 'distutils-precedence.pth' \
  -exec rm -rf {} +
# The image runs as uid 1000: the interpreter under /root must be reachable.
chmod 0755 "$rootfs/root"
for exe in python3 python3.10 pip3; do
  ln -sf "$PY_PREFIX/bin/$exe" "$rootfs/usr/local/bin/$exe"
done
ln -sf "$PY_PREFIX/bin/python3.10" "$rootfs/usr/local/bin/python"
ln -sf "$PY_PREFIX/bin/pip3" "$rootfs/usr/local/bin/pip"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -cf "$work/rootfs.tar" .
$ENGINE rmi -f "$TAG" >/dev/null 2>&1 || true
# pip puts console scripts (tfx-transfer) next to the interpreter.
$ENGINE import --change "ENV PATH=$PY_PREFIX/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" --change 'CMD ["python"]' "$work/rootfs.tar" "$TAG" >/dev/null
echo "$TAG: $(du -sh "$rootfs" | cut -f1) rootfs"
