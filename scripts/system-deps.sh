#!/usr/bin/env bash
# Install and start what the tests need outside Python: Debian's chromium (browser tests)
# and a running PostgreSQL. Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ! command -v chromium >/dev/null 2>&1; then
  echo "system-deps: installing chromium"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "system-deps: installing postgresql"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  echo "system-deps: starting PostgreSQL $ver"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  # Tests connect as postgres over TCP without a password and use the database "test".
  $SUDO -u postgres psql -qtc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
    || $SUDO -u postgres createdb test
fi
pg_up && echo "system-deps: PostgreSQL ready"
