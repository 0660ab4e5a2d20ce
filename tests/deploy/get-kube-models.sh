#!/bin/sh
# get-kube-models.sh - put the npm package kubernetes-models (JSON schemas of
# every Kubernetes API object, generated from the Kubernetes OpenAPI spec, with
# a validator) and @kubernetes-models/prometheus-operator (ServiceMonitor) into
# a build directory, for tests/deploy/validate-k8s.mjs. kubectl cannot validate
# offline: its client-side validation downloads the schema from an API server.
#
#   tests/deploy/get-kube-models.sh [DIR]      (default: build/deploy-tools)
#
# Prints the node_modules directory on success; exits 3 when the packages
# cannot be had (no npm, registry says no), 1 on any other failure.
set -eu

dir=${1:-build/deploy-tools}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
mods="$dir/kube-models/node_modules"

if [ -f "$mods/kubernetes-models/package.json" ] &&
   [ -f "$mods/@kubernetes-models/prometheus-operator/package.json" ]; then
    echo "$mods"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "get-kube-models.sh: node/npm are not installed" >&2
    exit 3
fi
if ! timeout 300 npm install --prefix "$dir/kube-models" --no-save --no-package-lock \
        --no-audit --no-fund --ignore-scripts \
        'kubernetes-models@5' '@kubernetes-models/prometheus-operator@6' \
        >"$dir/kube-models.log" 2>&1; then
    echo "get-kube-models.sh: npm could not install kubernetes-models (see $dir/kube-models.log):" >&2
    tail -5 "$dir/kube-models.log" >&2
    exit 3
fi
echo "$mods"
