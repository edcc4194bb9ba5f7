#!/usr/bin/env bash
# Every wheel the image installs, downloaded on the host with the project's
# pins (builds have no network): k8s/image/wheelhouse.sh [DIR]
set -euo pipefail
DIR=${1:-build/wheelhouse}
PY=${PY:-.venv/bin/python}
mkdir -p "$DIR"
"$PY" -m pip download --disable-pip-version-check -q -d "$DIR" -c constraints.txt .
# pip download keeps the project itself as an sdist: the Dockerfile installs it from source.
rm -f "$DIR"/tfx[-_]transfer-*
# Some pins exist only as sdists (pyfarmhash needs a C compiler the image has
# not): build them into wheels here.
for sdist in "$DIR"/*.tar.gz "$DIR"/*.zip; do
  [ -e "$sdist" ] || continue
  "$PY" -m pip wheel --disable-pip-version-check -q --no-deps -w "$DIR" "$sdist" && rm "$sdist"
done
echo "$DIR: $(ls "$DIR" | wc -l) files, $(du -sh "$DIR" | cut -f1)"
