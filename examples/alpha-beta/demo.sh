#!/usr/bin/env bash
# The alpha/beta demo: a real SPIRE server and agent issue the sandbox's
# JWT-SVIDs, a token issuer verifies them, and two protected services (alpha,
# beta) each receive a token with their own audience and scope, from an agent
# that holds no credential at all.
#
#   KEEP=1 examples/alpha-beta/demo.sh   leave everything running afterwards
#
# Needs root (lanyard run isolates the agent), Go (to build SPIRE once), curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\nDEMO FAILED: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root: lanyard run puts the agent in its own namespaces"

scripts/install-deps >/dev/null
bold "building lanyard and the demo services"
cargo build --quiet --bin lanyard --bin demo-pki --bin demo-issuer --bin demo-service
bin=${CARGO_TARGET_DIR:-$root/target}/debug
spire=$(scripts/install-spire)

work=$(mktemp -d /tmp/lanyard-demo.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  if [ "${KEEP:-}" = 1 ] && [ "${demo_ok:-0}" = 1 ]; then return; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Polls until the first line of $1 says "listening on ADDR"; prints ADDR.
wait_addr() {
  local f=$1 line
  for _ in $(seq 1 300); do
    line=$(head -n1 "$f" 2>/dev/null || true)
    [[ $line == "listening on "* ]] && { echo "${line#listening on }"; return; }
    sleep 0.1
  done
  fail "no address from $f: $(cat "$f".err 2>/dev/null)"
}
retry() { local n=$1; shift; for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1; }

bold "demo CA and certificates for issuer, alpha, beta"
"$bin/demo-pki" --dir "$work/pki" issuer.demo.test alpha.demo.test beta.demo.test
ls "$work/pki"

bold "SPIRE $("$spire/spire-server" --version 2>&1): server and agent on loopback"
td=demo.test
sport=$(free_port)
mkdir -p "$work/spire/server" "$work/spire/agent-data" "$work/spire/agent"
chmod 700 "$work/spire" "$work/spire/agent"
cat >"$work/spire/server.conf" <<HCL
server {
  bind_address = "127.0.0.1"
  bind_port = "$sport"
  socket_path = "$work/spire/server/api.sock"
  trust_domain = "$td"
  data_dir = "$work/spire/server"
  log_level = "WARN"
  default_jwt_svid_ttl = "5m"
}
plugins {
  DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "$work/spire/server/datastore.sqlite3" } }
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
}
HCL
"$spire/spire-server" run -config "$work/spire/server.conf" >"$work/spire/server.log" 2>&1 & pids+=($!)
retry 150 "$spire/spire-server" healthcheck -socketPath "$work/spire/server/api.sock" || fail "SPIRE server not healthy: $(tail -5 "$work/spire/server.log")"
"$spire/spire-server" bundle show -socketPath "$work/spire/server/api.sock" >"$work/spire/bundle.pem"
token=$("$spire/spire-server" token generate -socketPath "$work/spire/server/api.sock" -spiffeID "spiffe://$td/node/demo" | sed -n 's/^Token: //p')
[ -n "$token" ] || fail "no join token"
cat >"$work/spire/agent.conf" <<HCL
agent {
  data_dir = "$work/spire/agent-data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "$sport"
  socket_path = "$work/spire/agent/agent.sock"
  trust_bundle_path = "$work/spire/bundle.pem"
  trust_domain = "$td"
  experimental { sync_interval = "1s" }
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "disk" { plugin_data { directory = "$work/spire/agent-data" } }
  WorkloadAttestor "unix" { plugin_data {} }
}
HCL
"$spire/spire-agent" run -config "$work/spire/agent.conf" -joinToken "$token" >"$work/spire/agent.log" 2>&1 & pids+=($!)
retry 150 "$spire/spire-agent" healthcheck -socketPath "$work/spire/agent/agent.sock" || fail "SPIRE agent not healthy: $(tail -5 "$work/spire/agent.log")"
# Lanyard and the issuer run as root here: both are this workload.
"$spire/spire-server" entry create -socketPath "$work/spire/server/api.sock" -parentID "spiffe://$td/node/demo" \
  -spiffeID "spiffe://$td/sandbox/agent-1" -selector unix:uid:0 >/dev/null
retry 150 "$spire/spire-agent" api fetch jwt -audience probe -socketPath "$work/spire/agent/agent.sock" || fail "registration entry never reached the agent"
echo "SPIRE ready: workload spiffe://$td/sandbox/agent-1 (selector unix:uid:0), Workload API $work/spire/agent/agent.sock"
sock="unix://$work/spire/agent/agent.sock"

bold "token issuer, alpha and beta (HTTPS, demo CA)"
# The sandbox works for alice: the provisioning service left her token where
# only Lanyard reads it (lanyard run hides the directory from the agent).
mkdir -p -m 700 "$work/owner"
"$bin/demo-issuer" --name issuer.demo.test --cert "$work/pki/issuer.demo.test.pem" --key "$work/pki/issuer.demo.test-key.pem" \
  --workload-api "$sock" --allowed-prefix "spiffe://$td/sandbox/" \
  --audience alpha=alpha.read,alpha.write --audience beta=beta.read \
  --owner-token "alice@demo.test=$work/owner/token" >"$work/issuer.out" 2>"$work/issuer.out.err" & pids+=($!)
issuer=$(wait_addr "$work/issuer.out"); iport=${issuer##*:}
for svc in alpha beta; do
  "$bin/demo-service" --name $svc --cert "$work/pki/$svc.demo.test.pem" --key "$work/pki/$svc.demo.test-key.pem" \
    --issuer "https://issuer.demo.test:$iport" --issuer-addr "$issuer" --ca "$work/pki/ca.pem" --scope $svc.read \
    >"$work/$svc.out" 2>"$work/$svc.out.err" & pids+=($!)
done
alpha=$(wait_addr "$work/alpha.out"); beta=$(wait_addr "$work/beta.out")
echo "issuer https://issuer.demo.test:$iport/token   alpha https://alpha.demo.test:${alpha##*:}   beta https://beta.demo.test:${beta##*:}"

cat >"$work/lanyard.yaml" <<YAML
# The agent's only way out: this proxy, listening inside the agent's own network namespace.
listen: 127.0.0.1:3128
ca: { dir: $work/ca }                       # the sandbox CA the agent trusts (bundle.pem)
upstream_tls: { extra_ca_files: [$work/pki/ca.pem] }   # Lanyard (not the agent) trusts the demo CA
resolve: { issuer.demo.test: 127.0.0.1, alpha.demo.test: 127.0.0.1, beta.demo.test: 127.0.0.1 }
spiffe: { endpoint_socket: "$sock" }        # hidden from the agent
providers:
  demo-issuer:
    token_grant:
      token_endpoint: https://issuer.demo.test:$iport/token
      grant: token_exchange                  # RFC 8693: the JWT-SVID is the subject token
  on-behalf-of-alice:
    token_grant:
      issuer: https://issuer.demo.test:$iport   # token endpoint from its RFC 8414 metadata
      grant: token_exchange                  # alice's token is the subject, the JWT-SVID the actor
      on_behalf_of: { subject_token_file: $work/owner/token }
endpoints:
  - { name: alpha, host: alpha.demo.test, port: ${alpha##*:}, provider: demo-issuer, audience: alpha, scopes: [alpha.read] }
  - name: beta
    host: beta.demo.test
    port: ${beta##*:}
    provider: on-behalf-of-alice
    audience: beta
    scopes: [beta.read]
    # One action only: read beta's front page. Anything else is refused
    # before a token is fetched (check it: lanyard policy test).
    statements: [ { actions: [GET], resources: ["/"] } ]
egress: { default: deny }
# The agent sees the system directories (read-only), the CA bundle, and its script; nothing else.
agent: { read_only: [$work/agent.sh] }
# One JSON line per exchange and per injected request: who (SPIFFE ID), where, which token (its jti).
audit: { file: $work/audit/audit.jsonl }
YAML
mkdir -p -m 700 "$work/audit"
bold "lanyard.yaml"
cat "$work/lanyard.yaml"

cat >"$work/agent.sh" <<AGENT
#!/bin/sh
# The agent: plain curl, no credential, no SPIFFE socket.
echo "agent: uid=\$(id -u) SPIFFE vars=\$(env | grep -c '^SPIFFE_') processes visible=\$(ls /proc | grep -c '^[0-9]')"
# First something beta's statements do not allow: refused by Lanyard, no token fetched.
curl -sS --max-time 20 -X DELETE -w 'HTTP %{http_code}\\n' "https://beta.demo.test:${beta##*:}/items/1" | sed "s/^/agent: beta DELETE: /"
for svc in alpha beta; do
  port=\$( [ \$svc = alpha ] && echo ${alpha##*:} || echo ${beta##*:} )
  curl -sS --max-time 20 "https://\$svc.demo.test:\$port/" | sed "s/^/agent: \$svc says: /"
done
# A bare connect(): the Workload API speaks only gRPC, so an HTTP request would fail either way.
if python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' $work/spire/agent/agent.sock 2>/dev/null; then
  echo "agent: Workload API reachable"; else echo "agent: Workload API unreachable"; fi
if curl -sS --max-time 5 --noproxy '*' -k "https://$alpha/" >/dev/null 2>&1; then
  echo "agent: alpha reachable directly"; else echo "agent: alpha unreachable without the proxy"; fi
AGENT
chmod 755 "$work/agent.sh"
"$bin/lanyard" check --config "$work/lanyard.yaml"
bold "lanyard policy test   (what beta's statements allow, decided as the proxy will)"
"$bin/lanyard" policy test --config "$work/lanyard.yaml" GET "https://beta.demo.test:${beta##*:}/" || fail "policy test refused GET /"
if "$bin/lanyard" policy test --config "$work/lanyard.yaml" DELETE "https://beta.demo.test:${beta##*:}/items/1"; then
  fail "policy test allowed DELETE /items/1"; fi

bold "lanyard run -- agent.sh   (the agent runs as a uid leased for it alone, in its own namespaces)"
LANYARD_LOG=${LANYARD_LOG:-info} "$bin/lanyard" run --config "$work/lanyard.yaml" -- /bin/sh "$work/agent.sh" \
  >"$work/agent.out" 2>"$work/lanyard.log" || fail "lanyard run exited $?: $(tail -5 "$work/lanyard.log")"
cat "$work/agent.out"

bold "checks"
expect() { grep -qF -- "$1" "$work/agent.out" || fail "missing: $1"; echo "ok: $1"; }
grep -qE "^agent: uid=(6[1-5][0-9]{3}) SPIFFE vars=0 processes visible=[0-9]$" "$work/agent.out" \
  || fail "missing: agent running as a leased uid, no SPIFFE variable, only its own processes"
echo "ok: agent ran as a leased uid, with no SPIFFE variable, seeing only its own processes"
expect "agent: alpha says: audience: alpha"
expect "agent: alpha says: scope: alpha.read"
expect "agent: alpha says: subject: spiffe://$td/sandbox/agent-1"
expect "agent: beta says: audience: beta"
expect "agent: beta says: scope: beta.read"
expect "agent: beta says: subject: alice@demo.test"
expect "agent: beta says: actor: spiffe://$td/sandbox/agent-1"
expect "agent: beta DELETE: lanyard: endpoint 'beta': no statement allows DELETE /items/1"
expect "agent: beta DELETE: HTTP 403"
expect "agent: Workload API unreachable"
expect "agent: alpha unreachable without the proxy"
grep -q "eyJ" "$work/agent.out" && fail "a token or SVID reached the agent"
echo "ok: no token or SVID in anything the agent saw"
grep -h "accepted" "$work/alpha.out.err" "$work/beta.out.err" | sed 's/^/service log: /'
bold "audit trail ($work/audit/audit.jsonl)"
cat "$work/audit/audit.jsonl"
python3 - "$work/audit/audit.jsonl" "spiffe://$td/sandbox/agent-1" <<'PY' || fail "the audit trail does not record both injections"
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
for name in ("alpha", "beta"):
    req = [e for e in events if e["event"] == "request" and e["endpoint"] == name]
    x = [e for e in events if e["event"] == "exchange" and e["audience"] == name]
    assert req and x, name
    assert req[0]["spiffe_id"] == sys.argv[2] and req[0]["injected"], req[0]
    assert req[0]["token_id"].startswith("jti:") and req[0]["token_id"] == x[0]["token_id"], (req[0], x[0])
# The refused DELETE came first, and no exchange for beta happened before the allowed GET.
denied = [i for i, e in enumerate(events) if e["event"] == "denied" and e.get("endpoint") == "beta"]
assert len(denied) == 1 and events[denied[0]]["reason"] == "policy", denied
first_x = min(i for i, e in enumerate(events) if e["event"] == "exchange" and e["audience"] == "beta")
assert denied[0] < first_x, "beta's token was fetched before the refused call"
PY
echo "ok: each injection is audited with the sandbox's SPIFFE ID and the jti of the token it got"
echo "ok: beta's refused DELETE is audited as a policy denial, and fetched no token"
demo_ok=1
bold "demo OK"
if [ "${KEEP:-}" = 1 ]; then
  cat <<EOF
Everything is still running (work dir $work):
  SPIRE server:  $spire/spire-server entry show -socketPath $work/spire/server/api.sock
  Workload API:  $spire/spire-agent api fetch jwt -audience x -socketPath $work/spire/agent/agent.sock
  again:         $bin/lanyard run --config $work/lanyard.yaml -- /bin/sh $work/agent.sh
  logs:          $work/*.err $work/lanyard.log $work/spire/*.log
  stop:          kill ${pids[*]}; rm -rf $work
EOF
fi
