#!/usr/bin/env bash
# Gatehouse memory per idle session: opens IDLE client sessions (TLS, token, authenticated,
# ReadyForQuery) and keeps them open, then reports the gateway's RSS growth per session.
#
# Upstream, Gatehouse connects through a PgBouncer in transaction mode (as a deployment with
# thousands of mostly idle agents would), so the server does not need thousands of backends;
# PgBouncer's own RSS growth per client is printed beside Gatehouse's as a baseline.
#
#   bench/idle.sh                 # IDLE=5000
#   IDLE=1000 bench/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

IDLE=${IDLE:-5000}
command -v pgbouncer >/dev/null || { log "pgbouncer is missing (apt-get install pgbouncer)"; exit 1; }
ulimit -n "$(ulimit -Hn)"

bench_setup idle
PW=idle-$RANDOM$RANDOM
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); GH_PORT=$(free_port); API_PORT=$(free_port)
echo -n "$PW" > "$WORK/pwfile"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$WORK"

as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=scram-sha-256 --pwfile="$WORK/pwfile" -E UTF8 --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 100
EOF
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null

echo "\"postgres\" \"$PW\"" > "$WORK/userlist.txt"
cat > "$WORK/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
max_client_conn = $((IDLE + 100))
default_pool_size = 20
EOF
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
as_pg bash -c "ulimit -n $(ulimit -Hn); exec pgbouncer -q '$WORK/pgbouncer.ini'" &
PIDS+=($!)
sleep 1
BOUNCER_PID=$(pgrep -f "pgbouncer -q $WORK/pgbouncer.ini" | head -n1)

mkdir -p "$WORK/policies"
printf '@id("allow-all")\npermit(principal, action, resource);\n' > "$WORK/policies/all.cedar"
cat > "$WORK/gatehouse.toml" <<EOF
[server]
data_dir = "$WORK/gh"
api_listen = "127.0.0.1:$API_PORT"
postgres_listen = "127.0.0.1:$GH_PORT"
max_pending_handshakes = $((IDLE + 100))
max_pending_handshakes_per_source = $((IDLE + 100))
[policy]
files = ["$WORK/policies/*.cedar"]
[[connections]]
name = "postgres"
kind = "postgres"
host = "127.0.0.1"
port = $BOUNCER_PORT
database = "postgres"
user = "postgres"
password = "env:BENCH_PG_PASSWORD"
EOF
BENCH_PG_PASSWORD=$PW GATEHOUSE_LOG=warn "$GATEHOUSE" serve --config "$WORK/gatehouse.toml" 2>"$WORK/gatehouse.log" &
GH_PID=$!
PIDS+=($GH_PID)
for _ in $(seq 100); do [ -f "$WORK/gh/admin.token" ] && break; sleep 0.1; done
TOKEN=$(GATEHOUSE_URL=http://127.0.0.1:$API_PORT GATEHOUSE_TOKEN=$(cat "$WORK/gh/admin.token") "$GATEHOUSE" token create --name idle --group agents 2>/dev/null)

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# Warm up: one session, so one-time allocations (TLS config, policy state) are not counted.
IDLE_N=1 TOKEN=$TOKEN PORT=$GH_PORT HOLD=0 python3 bench/idle_clients.py >/dev/null
sleep 1
GH_BEFORE=$(rss "$GH_PID"); BOUNCER_BEFORE=$(rss "$BOUNCER_PID")
log "opening $IDLE idle sessions"
mkfifo "$WORK/ready"
IDLE_N=$IDLE TOKEN=$TOKEN PORT=$GH_PORT HOLD=1 READY="$WORK/ready" python3 bench/idle_clients.py &
CLIENT=$!
PIDS+=($CLIENT)
read -r opened < "$WORK/ready"
sleep 2
GH_AFTER=$(rss "$GH_PID"); BOUNCER_AFTER=$(rss "$BOUNCER_PID")
python3 - "$opened" "$GH_BEFORE" "$GH_AFTER" "$BOUNCER_BEFORE" "$BOUNCER_AFTER" <<'EOF'
import sys
n, gb, ga, bb, ba = (int(x) for x in sys.argv[1:])
print(f"| idle sessions | gatehouse RSS before (MiB) | after (MiB) | per session (KiB) | pgbouncer per client (KiB) |")
print(f"|---|---|---|---|---|")
print(f"| {n} | {gb/1024:.1f} | {ga/1024:.1f} | {(ga-gb)/n:.1f} | {(ba-bb)/n:.1f} |")
EOF
