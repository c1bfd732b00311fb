#!/usr/bin/env bash
# Quickstart: an HTTPS upstream, `lanyard proxy` in front of it, and a curl that
# sends no credential (or a wrong one) and still arrives with the right token.
# Everything runs on loopback in a temp dir and is cleaned up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

command -v curl >/dev/null || fail "curl is required (apt-get install curl)"
say "building lanyard and the demo upstream"
cargo build --quiet --bin lanyard --bin demo-upstream
bin=${CARGO_TARGET_DIR:-target}/debug

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

# Reads the "listening on ADDR" line a process prints at start.
wait_addr() { local f=$1 line; for _ in $(seq 1 200); do line=$(head -n1 "$f" 2>/dev/null || true); [[ $line == listening\ on\ * ]] && { echo "${line#listening on }"; return; }; kill -0 "${pids[-1]}" 2>/dev/null || fail "process exited: $(cat "$f" "$f.err" 2>/dev/null)"; sleep 0.05; done; fail "no address from $f"; }

say "starting an HTTPS upstream for alpha.test"
"$bin/demo-upstream" --dir "$work" --host alpha.test --name alpha >"$work/up.out" 2>"$work/up.out.err" & pids+=($!)
up=$(wait_addr "$work/up.out"); port=${up##*:}
echo "upstream: https://alpha.test:$port (really $up)"

printf 'demo-token-%s\n' "$RANDOM$RANDOM" >"$work/token"
cat >"$work/lanyard.yaml" <<YAML
listen: 127.0.0.1:0
ca: { dir: $work/ca }
upstream_tls: { extra_ca_files: [$work/upstream-ca.pem] }
resolve: { alpha.test: 127.0.0.1 }
providers:
  demo-static: { static: { token_file: $work/token } }
endpoints:
  - { name: alpha, host: alpha.test, port: $port, path: /api, methods: [GET, POST], provider: demo-static }
egress: { default: deny }
YAML
say "config"
cat "$work/lanyard.yaml"
"$bin/lanyard" check --config "$work/lanyard.yaml"

say "starting lanyard proxy"
"$bin/lanyard" proxy --config "$work/lanyard.yaml" >"$work/lanyard.out" 2>"$work/lanyard.out.err" & pids+=($!)
proxy=$(wait_addr "$work/lanyard.out")
echo "proxy: http://$proxy   sandbox CA: $work/ca/ca.pem"

say "agent: curl https://alpha.test:$port/api/hello with a bogus Authorization header"
out=$(curl -sS --proxy "http://$proxy" --cacert "$work/ca/ca.pem" -H 'Authorization: Bearer agent-made-this-up' "https://alpha.test:$port/api/hello")
echo "$out" | sed 's/^/  upstream saw> /'
grep -q "authorization: Bearer $(cat "$work/token")" <<<"$out" || fail "token was not injected"
grep -q "agent-made-this-up" <<<"$out" && fail "client header was forwarded"

say "agent: same request over HTTP/2"
out=$(curl -sS --http2 --proxy "http://$proxy" --cacert "$work/ca/ca.pem" "https://alpha.test:$port/api/hello")
grep -q "version: HTTP/2.0" <<<"$out" && grep -q "authorization: Bearer demo-token" <<<"$out" || fail "h2 request not injected: $out"
echo "  ok: HTTP/2 end to end, token injected"

say "agent: a path outside the endpoint keeps the agent's own header"
out=$(curl -sS --proxy "http://$proxy" --cacert "$work/ca/ca.pem" -H 'Authorization: Bearer agents-own' "https://alpha.test:$port/public")
grep -q "authorization: Bearer agents-own" <<<"$out" || fail "non-matched path was rewritten: $out"
echo "  ok: /public reached the upstream with the agent's own header"

say "agent: a host no rule allows"
if err=$(curl -sS --proxy "http://$proxy" "https://example.com/" 2>&1); then fail "denied host was reachable"; fi
echo "  curl: $err"

say "lanyard's log (the token never appears in it)"
grep -q "$(cat "$work/token")" "$work/lanyard.out.err" && fail "token in log"
sed 's/^/  /' "$work/lanyard.out.err"
say "quickstart OK"
