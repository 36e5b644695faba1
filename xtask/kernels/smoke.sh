#!/bin/bash
# The smoke test of `cargo xtask kernels`, run by the guest's /init chrooted into the host's
# root file system (so this is the host's bash, python3 and curl on the guest's kernel).
# Arguments: the agent binary, seconds to wait for its programs to load, and optionally the
# `verifier` binary of `cargo xtask verifier`, run after the agent: every program's verifier
# budget on this kernel, in every configuration (printed as SMOKE-VERIFIER lines).
# Prints the agent's stderr and first spans for diagnosis, then one machine-readable line:
#   SMOKE kernel=<uname -r> loaded=<yes|no> load_s=<s> degraded=<n> server_spans=<n>
#         client_spans=<n> linked=<n> verifier=<pass|fail|-> result=<pass|fail>
# linked: SERVER spans whose parent is one of curl's CLIENT spans (traceparent injection worked).
set -u
bin=$1
load_timeout=$2
verifier_bin=${3:-}
work=$(mktemp -d)
mkdir -p "$work/www"
echo "socktrace kernel smoke test" > "$work/www/index.html"

# The server first, and ready, so that no request but the test's two is traced.
(cd "$work/www" && exec python3 -m http.server 18080 --bind 127.0.0.1) \
    > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 120); do
    curl -s -o /dev/null http://127.0.0.1:18080/ && break
    sleep 1
done

"$bin" --log-level info > "$work/out" 2> "$work/err" &
agent=$!
loaded=no
for _ in $(seq "$load_timeout"); do
    if grep -q 'tracepoints attached' "$work/err"; then loaded=yes; break; fi
    kill -0 "$agent" 2>/dev/null || break
    sleep 1
done

if [ "$loaded" = yes ]; then
    for _ in 1 2; do
        curl -s -o /dev/null -w 'SMOKE-CURL: %{http_code}\n' http://127.0.0.1:18080/
    done
    sleep 10
fi
if [ "$loaded" = no ]; then
    echo "SMOKE-INIT: sock tracepoints of this kernel:" \
        $(ls /sys/kernel/tracing/events/sock 2>/dev/null || echo "(tracefs not mounted)")
fi
kill -INT "$agent" 2>/dev/null
for _ in $(seq 60); do
    kill -0 "$agent" 2>/dev/null || break
    sleep 1
done
kill -KILL "$agent" 2>/dev/null
wait "$agent"
echo "SMOKE-INIT: agent exited with $?"
kill "$server" 2>/dev/null

verifier=-
if [ -n "$verifier_bin" ] && [ -x "$verifier_bin" ]; then
    timeout 600 "$verifier_bin" > "$work/vout" 2> "$work/verr"
    if [ $? -eq 0 ]; then verifier=pass; else verifier=fail; fi
    { grep '^verifier:' "$work/vout"; grep -E '^(verifier:|  )' "$work/verr"; } \
        | head -n 500 | cut -c1-1000 | sed 's/^/SMOKE-VERIFIER: /'
    grep '^|' "$work/vout" | sed 's/^/SMOKE-VERIFIER-TABLE: /'
fi

head -c 20000 "$work/err" | cut -c1-400 | sed 's/^/SMOKE-STDERR: /'
head -n 20 "$work/out" | cut -c1-400 | sed 's/^/SMOKE-STDOUT: /'
load_s=$(sed -n 's/.*verified and attached in \([0-9.]*\) s.*/\1/p' "$work/err" | head -n 1)
degraded=$(grep -cE '^socktrace: (degraded|warning):' "$work/err")
server_spans=$(grep -F ' SERVER "GET /"' "$work/out" | grep -c 'status_code=200')
client_spans=$(grep -E '^[^ ]+ curl CLIENT ' "$work/out" | grep -c 'status_code=200')
linked=0
for parent in $(grep -F ' SERVER "GET /"' "$work/out" | grep -o ' parent=[0-9a-f]*' | cut -d= -f2); do
    grep -E '^[^ ]+ curl CLIENT ' "$work/out" | grep -q " span=$parent " && linked=$((linked + 1))
done
result=fail
if [ "$loaded" = yes ] && [ "$server_spans" -eq 2 ] && [ "$client_spans" -eq 2 ]; then
    result=pass
fi
echo "SMOKE kernel=$(uname -r) loaded=$loaded load_s=${load_s:--} degraded=$degraded server_spans=$server_spans client_spans=$client_spans linked=$linked verifier=$verifier result=$result"
