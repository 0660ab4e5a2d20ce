#!/bin/sh
# dist.sh - the release tarball the cloud recipes install on their VMs:
# the `cmake --install` tree (bin/starling, share/doc/starling) plus
# share/starling/runtime-packages.txt, the Debian packages its libraries
# come from. Build it on Debian 12, the VMs' system.
#
#   deploy/dist.sh [OUTDIR]        (default: build/dist)
#
# Prints the tarball's path. Upload it where the VMs can fetch it and give its
# URL to the recipe as starling_release_url.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cmake -S "$root" -B "$root/build/release" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build/release" --target starling -j "$(nproc)" >/dev/null
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cmake --install "$root/build/release" --prefix "$stage" --strip >/dev/null
mkdir -p "$stage/share/starling"
sh "$root/deploy/runtime-packages.sh" "$stage/bin/starling" > "$stage/share/starling/runtime-packages.txt"
version=$("$stage/bin/starling" -v | awk '{print $2}')
tarball="$out/starling-$version-linux-$(dpkg --print-architecture).tar.gz"
tar -C "$stage" -czf "$tarball" --owner=0 --group=0 bin share
echo "$tarball"
