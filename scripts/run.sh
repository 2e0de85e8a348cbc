#!/usr/bin/env bash
# `make run`: a PostgreSQL (DATABASE_URL if reachable, else the private cluster in .data/postgres),
# an encryption key, migrations, a first organization and key, then `hookrelay serve` in the
# foreground. Ctrl-C stops hookrelay gracefully, then the private cluster if this script started it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

own_cluster=0
if [ -n "${DATABASE_URL:-}" ] && url="$(DATABASE_URL="$DATABASE_URL" scripts/pg.sh run 2>/dev/null)" && [ "$url" = "$DATABASE_URL" ]; then
  echo "make run: using DATABASE_URL" >&2
else
  url="$(DATABASE_URL= scripts/pg.sh run)"
  own_cluster=1
fi
export DATABASE_URL="$url"

mkdir -p .data
if [ -z "${HOOKRELAY_ENCRYPTION_KEY:-}" ]; then
  if [ ! -s .data/encryption-key ]; then
    (umask 077; head -c 32 /dev/urandom | base64 > .data/encryption-key)
    echo "make run: WARNING: HOOKRELAY_ENCRYPTION_KEY is unset; generated one in .data/encryption-key." >&2
    echo "          Webhook secrets are encrypted with it: keep it, or set your own for production." >&2
  fi
  HOOKRELAY_ENCRYPTION_KEY="$(cat .data/encryption-key)"
  export HOOKRELAY_ENCRYPTION_KEY
fi

cargo build -p hookrelay --bin hookrelay
bin=target/debug/hookrelay
"$bin" migrate
"$bin" admin bootstrap --token-file .data/first-api-key > .data/bootstrap.json
listen="${HOOKRELAY_LISTEN:-127.0.0.1:8080}"
token="$(sed -n 's/.*"token": "\(hr_[^"]*\)".*/\1/p' .data/bootstrap.json)"

cat >&2 <<MSG

hookrelay is starting on http://$listen  (API docs: http://$listen/docs)
Dashboard: http://$listen/ui  (sign in with an API key, e.g. the one below)
MSG
if [ -n "$token" ]; then
  cat >&2 <<MSG
Your API key (also in .data/first-api-key):
  export TOKEN=$token

Create a webhook:
  curl -s -X POST http://$listen/api/v1/webhooks \\
    -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
    -d '{"url": "https://example.com/webhook", "events": ["user.created", "device.*"], "description": "My webhook"}'

MSG
else
  echo "Organizations exist already; create a key with: $bin admin key create --org <id>" >&2
fi
echo "Ctrl-C stops hookrelay$( [ "$own_cluster" = 1 ] && echo ' and the private PostgreSQL' )." >&2

stop_cluster() { if [ "$own_cluster" = 1 ]; then scripts/pg.sh stop run; fi; }
trap stop_cluster EXIT
# hookrelay gets Ctrl-C's SIGINT itself and shuts down gracefully; we wait, then stop the cluster.
trap '' INT
"$bin" serve || true
