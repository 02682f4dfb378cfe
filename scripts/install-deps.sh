#!/usr/bin/env bash
# Installs every Debian package trainq needs to build, run and test, then the npm test tools
# pinned in tests/tools/package-lock.json (the OpenAPI linter, puppeteer-core and axe-core).
# Idempotent and silent when everything is already present: dpkg-query decides first, and
# apt-get (update + install) runs only for what is missing; `npm ci` runs only when the lock
# file changed since the last install, so repeated CI runs cost nothing.
#
#   scripts/install-deps.sh [--no-test-tools]   --no-test-tools: the Debian packages only (what
#                                               scripts/demo.sh needs; no npm registry)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEST_TOOLS=1
[[ "${1:-}" == "--no-test-tools" ]] && TEST_TOOLS=0

PACKAGES=(
  # build
  build-essential cmake pkg-config git clang libclang-rt-14-dev clang-format
  libjansson-dev libpq-dev librabbitmq-dev libcurl4-openssl-dev uuid-dev
  libmicrohttpd-dev libjwt-dev libcmocka-dev libssl-dev
  # real services the integration tests run against
  postgresql postgresql-client rabbitmq-server docker.io busybox-static
  # test drivers and tools
  python3 python3-pika python3-jwt python3-cryptography python3-yaml python3-celery python3-jsonschema
  wrk curl jq valgrind procps iproute2 openssl
  # the dashboard's browser test (tests/integration/test_dashboard.py, puppeteer-core)
  chromium
  # deployment: base image, Compose stack, unit checks (scripts/build-images.sh, tests/deploy)
  debootstrap docker-compose systemd
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

# Node.js and npm for tests/tools: Debian's nodejs + npm (18.19 on Debian 12, which
# tests/tools' @redocly/cli 1.x supports), unless a node and npm are already there (a
# packaged Node.js of another origin ships npm inside its nodejs package).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi

if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's postinst scripts try to start postgresql/rabbitmq/docker system services; we run
  # our own instances on private ports, so a failing or absent init system must not fail the
  # install.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "install-deps: done" >&2
fi

((TEST_TOOLS == 1)) || exit 0

# The npm test tools, exactly as locked. The stamp holds the lock file's hash after a good
# install, so a run with the same lock file touches neither the registry nor node_modules.
TOOLS=$REPO/tests/tools
stamp=$TOOLS/node_modules/.trainq-lock.sha256
want=$(sha256sum "$TOOLS/package-lock.json" | cut -d' ' -f1)
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "install-deps: installing the test tools of tests/tools (npm ci)" >&2
  (cd "$TOOLS" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" >"$stamp"
fi
