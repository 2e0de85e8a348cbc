#!/usr/bin/env bash
# `make conformance`: the OpenAPI document against the running service. A PostgreSQL (DATABASE_URL
# if reachable, else the private test cluster) gets a fresh database; `hookrelay serve` starts on a
# free port; an organization is created; then schemathesis (pinned, in a virtual environment under
# .data/) runs every check against /openapi.json. Any failure is a non-zero exit.
#
#   CONFORMANCE_EXAMPLES  examples per operation and phase (default 30)
#   CONFORMANCE_SEED      schemathesis seed (default: random; printed in the summary)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
examples="${CONFORMANCE_EXAMPLES:-30}"
work=target/conformance
mkdir -p "$work" .data
log() { printf 'conformance: %s\n' "$*" >&2; }

# A virtual environment with the pinned schemathesis, made once.
venv=.data/venv
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 ships venv separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing python3-venv"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
      rm -rf "$venv"
      python3 -m venv "$venv"
    else
      log "python3 -m venv failed; install python3-venv"; exit 1
    fi
  fi
  "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

base_url="$(scripts/pg.sh test)"
db="hr_conformance_$$"
admin_url="${base_url%/*}/postgres"
psql "$admin_url" -qc "CREATE DATABASE $db" >/dev/null
export DATABASE_URL="${base_url%/*}/$db"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
export HOOKRELAY_LISTEN="127.0.0.1:$port" HOOKRELAY_PUBLIC_URL="$url"
HOOKRELAY_ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)"
HOOKRELAY_ADMIN_TOKEN="conformance-$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
export HOOKRELAY_ENCRYPTION_KEY HOOKRELAY_ADMIN_TOKEN
# Requests are many and fast; test sends go to names that do not resolve: fail them quickly.
# Private targets are allowed because which addresses a name resolves to is not the document's
# to state (a webhook URL's host); http:// because the run has no TLS receiver.
export HOOKRELAY_ORG_RATE_LIMIT=0 HOOKRELAY_ALLOW_HTTP=true HOOKRELAY_ALLOW_PRIVATE_TARGETS=true \
  HOOKRELAY_DELIVERY_TIMEOUT=2s RUST_LOG="${RUST_LOG:-error}"

cargo build -q -p hookrelay --bin hookrelay
target/debug/hookrelay serve >"$work/serve.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

for _ in $(seq 100); do
  curl -sf "$url/healthz" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { log "hookrelay exited; see $work/serve.log"; tail -20 "$work/serve.log" >&2; exit 1; }
  sleep 0.2
done

api() { # METHOD PATH TOKEN [BODY]
  curl -sf -X "$1" "$url$2" -H "Authorization: Bearer $3" -H 'Content-Type: application/json' ${4:+-d "$4"}
}
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)'"$1"')'; }

org="$(api POST /api/v1/admin/organizations "$HOOKRELAY_ADMIN_TOKEN" '{"name": "conformance"}')"
key="$(field '["api_key"]["token"]' <<<"$org")"
key_id="$(field '["api_key"]["id"]' <<<"$org")"
# A second key, so the key list has a next page: its cursor is one the service issued.
api POST /api/v1/keys "$key" '{"name": "cursor seed"}' >/dev/null
cursor="$(api GET '/api/v1/keys?limit=1' "$key" | field '["next_cursor"]')"
# What this organization can publish: the document states the shape of an event name, not which
# ones exist (scripts/conformance_hooks.py uses these).
events="$(api GET /api/v1/webhooks/events/available "$key" | python3 -c '
import json, sys
print(json.dumps([t["name"] for t in json.load(sys.stdin)["data"] if not t["name"].startswith("webhook.")]))')"

config="$work/schemathesis.toml"
cat >"$config" <<TOML
# Written by scripts/conformance.sh for one run.
[cache]
enabled = false

# 422 is how the service refuses a request the document allows but a rule it cannot state
# refuses (host bits in a CIDR block, a field for the other kind of source, until before since,
# a key repeated in one batch). A 400 still fails the run: it means the document is wrong.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

# A body over HOOKRELAY_MAX_BODY is refused with 413 before it is parsed, whatever else is wrong
# with it (say a batch of more than 1,000 events, which at a kilobyte each is also over 1 MiB).
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]

[auth.openapi.api_key]
bearer = "\${CONFORMANCE_KEY}"

[auth.openapi.admin_token]
bearer = "\${HOOKRELAY_ADMIN_TOKEN}"

TOML

export CONFORMANCE_KEY="$key" CONFORMANCE_KEY_ID="$key_id" CONFORMANCE_CURSOR="$cursor" \
  CONFORMANCE_EVENTS="$events" SCHEMATHESIS_HOOKS=scripts/conformance_hooks.py
seed_args=()
[ -n "${CONFORMANCE_SEED:-}" ] && seed_args=(--seed "$CONFORMANCE_SEED")
log "schemathesis against $url/openapi.json ($examples examples per operation)"
status=0
"$venv/bin/st" --config-file "$config" run "$url/openapi.json" --checks all \
  --max-examples "$examples" "${seed_args[@]}" --report junit --report-dir "$work" || status=$?

# A run that revoked or expired its own key would have tested nothing but 401s after that.
if ! api GET /api/v1/keys/check "$key" >/dev/null; then
  log "the run's own key stopped working during the run: its results are not trustworthy"
  status=1
fi
exit "$status"
