#!/usr/bin/env bash
# Builds trainq's container images on $TRAINQ_DOCKER_HOST (default: the private dockerd of
# scripts/services.sh), with no registry pull:
#
#   trainq-base:bookworm      Debian bookworm minbase made by debootstrap, `docker import`ed
#   trainq-producer:latest    deploy/images/Dockerfile --target producer   (uid 10001)
#   trainq-consumer:latest    deploy/images/Dockerfile --target consumer   (uid 10001)
#   trainq-postgres:latest    deploy/images/postgres.Dockerfile --target postgres
#   trainq-migrate:latest     deploy/images/postgres.Dockerfile --target migrate
#   trainq-rabbitmq:latest    deploy/images/rabbitmq.Dockerfile
#
#   scripts/build-images.sh [--force] [IMAGE...]    (IMAGE: producer consumer postgres migrate
#                                                    rabbitmq; default all)
#
# Caching, so that CI pays for a build only when its inputs changed:
#  - each image carries label org.trainq.source-sha = hash of its inputs (the files in its
#    build context, its Dockerfile, this script, the base's hash); an image whose label
#    matches is not rebuilt;
#  - $TRAINQ_IMAGE_CACHE (default /var/cache/trainq-images) keeps the debootstrap root file
#    system as a tar and a `docker save` of every image built, named by that hash, so a fresh
#    dockerd (a new state dir) loads them in seconds instead of building; only the newest
#    tar of each image is kept.
# Needs: debootstrap (first run only), docker CLI, network access to the Debian archive
# (apt-get runs inside `docker build --network host`: the private dockerd has no bridge).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
CACHE=${TRAINQ_IMAGE_CACHE:-/var/cache/trainq-images}
MIRROR=${TRAINQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=trainq-base:bookworm
ALL=(producer consumer postgres migrate rabbitmq)

die() { echo "build-images: $*" >&2; exit 1; }
say() { echo "build-images: $*" >&2; }

force=0
want=()
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    producer | consumer | postgres | migrate | rabbitmq) want+=("$a") ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images: unknown argument \"$a\" (--force, ${ALL[*]})" >&2; exit 2 ;;
  esac
done
((${#want[@]} > 0)) || want=("${ALL[@]}")

if [[ -z "${TRAINQ_DOCKER_HOST:-}" ]]; then
  eval "$(bash "$REPO/scripts/services.sh" env)"
fi
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
dk() { "$DOCKER" -H "$TRAINQ_DOCKER_HOST" "$@"; }
dk version >/dev/null 2>&1 || die "docker does not answer on $TRAINQ_DOCKER_HOST (run scripts/services.sh up)"
mkdir -p "$CACHE"

label_of() { # image -> its org.trainq.source-sha label, or nothing
  dk image inspect --format '{{index .Config.Labels "org.trainq.source-sha"}}' "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------- base image

# The root file system tar is the cache; its hash names the base. Deterministic enough: a
# rebuilt tar (new debootstrap run) gets a new hash and so rebuilds every image, as it must.
make_base_tar() {
  local tar=$CACHE/bookworm-minbase.tar root
  if [[ -s $tar ]]; then printf '%s' "$tar"; return 0; fi
  command -v debootstrap >/dev/null || die "debootstrap not found (scripts/install-deps.sh installs it)"
  root=$(mktemp -d /var/tmp/trainq-debootstrap.XXXXXX)
  say "debootstrap --variant=minbase bookworm ($MIRROR) into $root"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { rm -rf "$root"; die "debootstrap failed, see $CACHE/debootstrap.log"; }
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
EOF
  # Images never need apt's caches, docs or man pages; dpkg keeps its database (runtime
  # stages apt-get install into it).
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/01-trainq-nodoc"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\nAcquire::Retries "3";\n' \
    >"$root/etc/apt/apt.conf.d/01-trainq"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*.log
  tar -C "$root" --numeric-owner --sort=name --exclude='./proc/*' --exclude='./sys/*' \
    --exclude='./dev/*' -cf "$tar.tmp" . || { rm -rf "$root"; die "could not tar $root"; }
  rm -rf "$root"
  mv "$tar.tmp" "$tar"
  printf '%s' "$tar"
}

ensure_base() {
  local tar sha
  tar=$(make_base_tar)
  sha=$(sha256sum "$tar" | cut -c1-16)
  BASE_SHA=$sha
  if [[ $(label_of "$BASE") == "$sha" ]]; then return 0; fi
  say "importing $BASE from $tar"
  dk import -c "LABEL org.trainq.source-sha=$sha" -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' \
    "$tar" "$BASE" >/dev/null || die "docker import of $BASE failed"
}

# ---------------------------------------------------------------- trainq images

# image -> "dockerfile target context-paths..." (every path its Dockerfile COPYs, and no more:
# the context's hash is the cache key).
inputs_of() {
  case "$1" in
    producer | consumer)
      echo "deploy/images/Dockerfile $1 CMakeLists.txt shared producer consumer ui deploy/images/runtime-packages.sh" ;;
    postgres)
      echo "deploy/images/postgres.Dockerfile postgres compose/postgresql.conf deploy/images/postgres-entrypoint.sh" ;;
    migrate)
      echo "deploy/images/postgres.Dockerfile migrate compose/postgresql.conf deploy/images/postgres-entrypoint.sh db scripts/migrate.sh" ;;
    rabbitmq)
      echo "deploy/images/rabbitmq.Dockerfile rabbitmq compose/rabbitmq.conf deploy/images/rabbitmq-entrypoint.sh" ;;
  esac
}

# A reproducible tar of the paths (git's view: tracked and untracked-but-not-ignored files,
# so build trees, .state and caches never enter the context).
context_tar() { # dockerfile paths...
  local df=$1
  shift
  { git -C "$REPO" ls-files -co --exclude-standard -- "$@"; echo "$df"; } | LC_ALL=C sort -u \
    | tar -C "$REPO" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --no-recursion -T - -cf -
}

build_one() {
  local name=$1 spec df target paths sha have ctx saved
  spec=$(inputs_of "$name")
  read -r df target paths <<<"$spec"
  ctx=$(mktemp /var/tmp/trainq-context.XXXXXX)
  # shellcheck disable=SC2086  # paths: repository-relative paths without spaces, one word each
  context_tar "$df" $paths >"$ctx"
  sha=$( { sha256sum <"$ctx"; echo "$target $BASE_SHA"; sha256sum <"${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
  local image=trainq-$name:latest
  have=$(label_of "$image")
  if ((force == 0)) && [[ $have == "$sha" ]]; then
    rm -f "$ctx"
    say "$image is up to date ($sha)"
    return 0
  fi
  saved=$CACHE/trainq-$name-$sha.tar
  if ((force == 0)) && [[ -s $saved ]] && dk load -q -i "$saved" >/dev/null 2>&1 \
    && [[ $(label_of "$image") == "$sha" ]]; then
    rm -f "$ctx"
    say "$image loaded from $saved"
    return 0
  fi
  say "building $image ($sha)"
  local log=$CACHE/build-$name.log old
  old=$(dk image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  # --force-rm: a failed step's container is removed too (the legacy builder keeps it).
  if ! dk build --network host --force-rm -f "$df" --target "$target" --build-arg "BASE=$BASE" \
      --label "org.trainq.source-sha=$sha" -t "$image" - <"$ctx" >"$log" 2>&1; then
    rm -f "$ctx"
    tail -n 40 "$log" >&2
    die "docker build of $image failed, see $log"
  fi
  rm -f "$ctx"
  # The image this one replaces would stay behind untagged; its layers shared with the new
  # one (and the build stages, the next build's cache) are kept by Docker.
  if [[ -n $old && $old != "$(dk image inspect --format '{{.Id}}' "$image")" ]]; then
    dk rmi "$old" >/dev/null 2>&1 || true
  fi
  rm -f "$CACHE"/trainq-"$name"-*.tar
  if dk save -o "$saved.tmp" "$image"; then mv "$saved.tmp" "$saved"; else rm -f "$saved.tmp"; fi
}

ensure_base
for name in "${want[@]}"; do build_one "$name"; done
for name in "${want[@]}"; do
  printf 'build-images: %-24s %s\n' "trainq-$name:latest" \
    "$(dk image inspect --format '{{.Size}}' "trainq-$name:latest" | awk '{printf "%.1f MB", $1/1e6}')" >&2
done
