#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use is accepting connections at 127.0.0.1:5432:
# starts a local cluster that is installed but stopped, and says clearly what is missing.
set -euo pipefail

host=127.0.0.1
port=5432

if pg_isready -h "$host" -p "$port" -q 2>/dev/null; then
  exit 0
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /etc/postgresql ] || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  cat >&2 <<MSG
error: PostgreSQL is not running at $host:$port and no local cluster is installed.
Kagzi's tests need a real PostgreSQL (trust auth, user postgres). Install one
(Debian: apt-get install postgresql) or point DATABASE_URL at a running server.
MSG
  exit 1
fi

version=$(ls /etc/postgresql | sort -V | tail -n 1)
echo "PostgreSQL $version is stopped; starting it" >&2
pg_ctlcluster --skip-systemctl-redirect "$version" main start

for _ in $(seq 1 30); do
  if pg_isready -h "$host" -p "$port" -q; then
    exit 0
  fi
  sleep 1
done
echo "error: PostgreSQL $version did not accept connections at $host:$port within 30 s" >&2
exit 1
