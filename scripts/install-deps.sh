#!/usr/bin/env bash
# Installs every Debian package trainq needs to build, run and test.
# Idempotent and silent when everything is already present: dpkg-query decides first, and
# apt-get (update + install) runs only for what is missing, so repeated CI runs cost nothing.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config git clang libclang-rt-14-dev
  libjansson-dev libpq-dev librabbitmq-dev libcurl4-openssl-dev uuid-dev
  libmicrohttpd-dev libjwt-dev libcmocka-dev libssl-dev
  # real services the integration tests run against
  postgresql postgresql-client rabbitmq-server docker.io busybox-static
  # test drivers and tools
  python3 python3-pika python3-jwt python3-cryptography python3-yaml python3-celery
  wrk curl jq valgrind procps iproute2 openssl
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian's postinst scripts try to start postgresql/rabbitmq/docker system services; we run our
# own instances on private ports, so a failing or absent init system must not fail the install.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done" >&2
