#!/bin/sh
# get-hcl2json.sh - put the npm package @cdktf/hcl2json (HashiCorp's HCL
# parser, compiled to WebAssembly) into a build directory, for
# tests/deploy/hcl2json.cjs: the Terraform recipes are parsed with the real
# HCL grammar when `terraform validate` cannot run (no provider downloads).
#
#   tests/deploy/get-hcl2json.sh [DIR]      (default: build/deploy-tools)
#
# Prints the node_modules directory on success; exits 3 when the package
# cannot be had (no npm, registry says no), 1 on any other failure.
set -eu

dir=${1:-build/deploy-tools}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
mods="$dir/hcl2json/node_modules"

if [ -f "$mods/@cdktf/hcl2json/package.json" ]; then
    echo "$mods"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "get-hcl2json.sh: node/npm are not installed" >&2
    exit 3
fi
if ! timeout 300 npm install --prefix "$dir/hcl2json" --no-save --no-package-lock \
        --no-audit --no-fund --ignore-scripts '@cdktf/hcl2json@0.21' \
        >"$dir/hcl2json.log" 2>&1; then
    echo "get-hcl2json.sh: npm could not install @cdktf/hcl2json (see $dir/hcl2json.log):" >&2
    tail -5 "$dir/hcl2json.log" >&2
    exit 3
fi
echo "$mods"
