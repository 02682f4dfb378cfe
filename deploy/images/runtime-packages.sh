#!/bin/sh
# Prints, one per line, the Debian packages that hold the shared libraries BINARY loads
# (ldd's resolved paths, looked up with dpkg -S), minus libc6 which every base has.
# Used in the build stage of deploy/images/Dockerfile.
#   runtime-packages.sh BINARY
# bookworm's merged /usr: ldd may print /lib/... while dpkg registered /usr/lib/... (or the
# reverse), so both spellings are tried; a library no package owns is an error (exit 1).
set -eu
bin=$1
libs=$(ldd "$bin" | awk '/=> \//{print $3} /^[[:space:]]*\/[^ ]*ld-linux/{print $1}' | sort -u)
[ -n "$libs" ] || { echo "runtime-packages: ldd found no libraries in $bin" >&2; exit 1; }
out=""
for lib in $libs; do
    real=$(readlink -f "$lib")
    pkg=""
    for p in "$lib" "$real" "/usr$lib" "${lib#/usr}" "/usr$real" "${real#/usr}"; do
        pkg=$(dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1) || true
        [ -n "$pkg" ] && break
    done
    [ -n "$pkg" ] || { echo "runtime-packages: no package owns $lib" >&2; exit 1; }
    out="$out$pkg
"
done
printf '%s' "$out" | grep -vx 'libc6' | sort -u
