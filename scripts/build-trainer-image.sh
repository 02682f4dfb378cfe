#!/usr/bin/env bash
# Builds the test training image trainq-fake-trainer:latest on $TRAINQ_DOCKER_HOST with
# `docker import` (no registry): a static /bin/busybox (package busybox-static) with a symlink
# per applet, and image/fake-trainer/train.sh as /trainer/train.sh, run by
# ENTRYPOINT ["/bin/sh","/trainer/train.sh"].
#
# Skips the build when the image exists and was built from the same inputs (label
# org.trainq.source-sha); --force rebuilds anyway.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${TRAINQ_TRAINING_IMAGE:-trainq-fake-trainer:latest}
BUSYBOX=/bin/busybox
TRAIN_SH="$REPO/image/fake-trainer/train.sh"
force=0
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    *) echo "usage: build-trainer-image.sh [--force]" >&2; exit 2 ;;
  esac
done

die() { echo "build-trainer-image: $*" >&2; exit 1; }

if [[ -z "${TRAINQ_DOCKER_HOST:-}" ]]; then
  eval "$(bash "$REPO/scripts/services.sh" env)"
fi
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
dk() { "$DOCKER" -H "$TRAINQ_DOCKER_HOST" "$@"; }

[[ -x "$BUSYBOX" ]] || die "$BUSYBOX not found (install busybox-static)"
# ldd succeeds only for dynamic executables; the image has no libc to load one.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is not statically linked (install busybox-static)"
fi
[[ -f "$TRAIN_SH" ]] || die "$TRAIN_SH not found"

sha=$(cat "$BUSYBOX" "$TRAIN_SH" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)

dk version >/dev/null 2>&1 || die "docker does not answer on $TRAINQ_DOCKER_HOST (run scripts/services.sh up)"
if ((force == 0)); then
  have=$(dk image inspect --format '{{index .Config.Labels "org.trainq.source-sha"}}' "$IMAGE" 2>/dev/null || true)
  if [[ "$have" == "$sha" ]]; then
    exit 0
  fi
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/trainer" "$root/tmp" "$root/workspace" "$root/etc"
chmod 1777 "$root/tmp"
install -m 0755 "$BUSYBOX" "$root/bin/busybox"
install -m 0755 "$TRAIN_SH" "$root/trainer/train.sh"
for applet in $("$BUSYBOX" --list); do
  [[ "$applet" == busybox ]] || ln -s busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/workspace:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

tar -C "$root" --numeric-owner --owner=0 --group=0 -cf - . \
  | dk import \
      -c 'ENTRYPOINT ["/bin/sh","/trainer/train.sh"]' \
      -c 'WORKDIR /workspace' \
      -c 'ENV PATH=/bin' \
      -c "LABEL org.trainq.source-sha=$sha" \
      -c 'LABEL org.trainq.image=fake-trainer' \
      - "$IMAGE" >/dev/null \
  || die "docker import of $IMAGE failed"
echo "build-trainer-image: built $IMAGE ($sha) on $TRAINQ_DOCKER_HOST"
