#!/bin/sh
# runtime-packages.sh - print the Debian packages that provide the shared
# libraries a binary needs, one per line, sorted (the runtime stage of the
# Dockerfile installs exactly these). Exits 1 when a library is not found or
# belongs to no package: a binary built against something outside Debian.
#
#   deploy/runtime-packages.sh BINARY
set -eu
bin=${1:?usage: runtime-packages.sh BINARY}
[ -x "$bin" ] || { echo "runtime-packages.sh: $bin is not an executable" >&2; exit 1; }

libs=$(ldd "$bin") || { echo "runtime-packages.sh: ldd failed on $bin" >&2; exit 1; }
if echo "$libs" | grep -q 'not found'; then
    echo "runtime-packages.sh: missing libraries:" >&2
    echo "$libs" | grep 'not found' >&2
    exit 1
fi
# "libuv.so.1 => /lib/x86_64-linux-gnu/libuv.so.1 (0x...)": the resolved path.
paths=$(echo "$libs" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
# dpkg knows a path as shipped (/usr/lib/... on a merged-/usr system, or
# /lib/...): ask for every variant of every path in one dpkg-query call (one
# call per path takes a minute on a busy machine), then map them back.
variants=""
for path in $paths; do
    real=$(readlink -f "$path")
    variants="$variants $path $real /usr$path ${path#/usr} /usr$real ${real#/usr}"
done
# "libuv1:amd64: /usr/lib/x86_64-linux-gnu/libuv.so.1" -> "path pkg"
owners=$(dpkg-query -S $variants 2>/dev/null | awk -F': ' '{ sub(/:.*/, "", $1); print $2, $1 }')
pkgs=""
for path in $paths; do
    real=$(readlink -f "$path")
    pkg=""
    for p in "$path" "$real" "/usr$path" "${path#/usr}" "/usr$real" "${real#/usr}"; do
        pkg=$(echo "$owners" | awk -v p="$p" '$1 == p { print $2; exit }')
        [ -n "$pkg" ] && break
    done
    if [ -z "$pkg" ]; then
        echo "runtime-packages.sh: no Debian package ships $path" >&2
        exit 1
    fi
    pkgs="$pkgs $pkg"
done
printf '%s\n' $pkgs | sort -u
