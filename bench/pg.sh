#!/usr/bin/env bash
# Gatehouse PostgreSQL benchmark: the cost of the gateway against direct access and PgBouncer.
#
# Starts a throwaway PostgreSQL cluster (scram-sha-256, TLS), loads pgbench data, starts
# PgBouncer (session mode, TLS to clients; installed from Debian if missing) and a release
# build of Gatehouse, then runs pgbench against each path in turn, interleaved, for ROUNDS
# rounds, and prints medians and ratios. Everything listens on 127.0.0.1 and is stopped at exit.
#
#   bench/pg.sh                       # defaults below
#   ROUNDS=5 DURATION=20 bench/pg.sh
#   MODES="prepared" SCRIPTS="select" CLIENTS="8" bench/pg.sh
#
# Gatehouse runs with its features on: client TLS, a token, the shipped example policies
# (examples/policies) deciding every statement, masking rules loaded (value detectors for
# emails, card numbers and SSNs on every value, and a column rule on pgbench_accounts.filler),
# and the audit log in AUDIT_DURABILITY mode. The target `bare` is a second Gatehouse with one
# allow-all policy, no masking and the audit log off (`durability = "off"`): forwarding alone.
# The cost of the features is the difference between the two.
#
#   CONNECT=1 bench/pg.sh             # pgbench -C: a new connection (TLS, token) per transaction
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
SCALE=${SCALE:-10}
MODES=${MODES:-"simple extended prepared"}
SCRIPTS=${SCRIPTS:-"select tpcb"}
CLIENTS=${CLIENTS:-"8 1"}
TARGETS=${TARGETS:-"direct pgbouncer gatehouse bare"}
AUDIT_DURABILITY=${AUDIT_DURABILITY:-strict}   # the audit log's [audit] durability (gatehouse target)
AUDIT_WRITES=${AUDIT_WRITES:-direct}           # the audit log's [audit] writes: direct or buffered
OVERLAP_READS=${OVERLAP_READS:-false}          # [audit] overlap_reads: reads forwarded while their intent syncs
SESSION_THREADS=${SESSION_THREADS:-}          # [server] session_threads of both gateways (empty: the default, one per core)
CONNECT=${CONNECT:-0}                          # 1: pgbench -C (connection setup per transaction)


if ! command -v pgbouncer >/dev/null 2>&1 && [[ " $TARGETS " == *" pgbouncer "* ]]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing pgbouncer"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; }
  else
    log "pgbouncer is missing (apt-get install pgbouncer); running without it"
    TARGETS=${TARGETS/pgbouncer/}
  fi
fi

bench_setup bench

PW=bench-$RANDOM$RANDOM
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); GH_PORT=$(free_port); API_PORT=$(free_port)
BARE_PORT=$(free_port); BARE_API_PORT=$(free_port)
echo -n "$PW" > "$WORK/pwfile"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout "$WORK/server.key" -out "$WORK/server.crt" >/dev/null 2>&1
chmod 600 "$WORK/server.key"
[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$WORK"

log "starting PostgreSQL on $PG_PORT"
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=scram-sha-256 --pwfile="$WORK/pwfile" -E UTF8 --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 1100   # 256 clients on each path at once (PgBouncer keeps its idle server connections)
shared_buffers = 256MB
ssl = on
ssl_cert_file = '$WORK/server.crt'
ssl_key_file = '$WORK/server.key'
EOF
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
export PGPASSWORD=$PW
pgbench -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1

if [[ " $TARGETS " == *" pgbouncer "* ]]; then
  log "starting PgBouncer on $BOUNCER_PORT"
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
pool_mode = session
max_client_conn = 6000
default_pool_size = 300
client_tls_sslmode = require
client_tls_key_file = $WORK/server.key
client_tls_cert_file = $WORK/server.crt
logfile = $WORK/pgbouncer.log
EOF
  [ "$(id -u)" -eq 0 ] && chown postgres "$WORK/pgbouncer.ini" "$WORK/userlist.txt"
  as_pg pgbouncer -q "$WORK/pgbouncer.ini" &
  PIDS+=($!)
  # PgBouncer's own pid (not runuser's), for its CPU time beside the gateway's.
  for _ in $(seq 50); do
    BOUNCER_PID=$(pgrep -f "^pgbouncer -q $WORK/pgbouncer.ini" | head -1 || true)
    [ -n "$BOUNCER_PID" ] && break
    sleep 0.1
  done
  [ -n "${BOUNCER_PID:-}" ] || { log "PgBouncer did not start (see $WORK/pgbouncer.log)"; exit 1; }
fi

log "starting Gatehouse on $GH_PORT"
cat > "$WORK/gatehouse.toml" <<EOF
[server]
data_dir = "$WORK/gh"
api_listen = "127.0.0.1:$API_PORT"
postgres_listen = "127.0.0.1:$GH_PORT"
max_pending_handshakes = 8192
${SESSION_THREADS:+session_threads = $SESSION_THREADS}
[audit]
durability = "$AUDIT_DURABILITY"
writes = "$AUDIT_WRITES"
overlap_reads = $OVERLAP_READS
[policy]
files = ["$PWD/examples/policies/*.cedar"]
[[connections]]
name = "postgres"
kind = "postgres"
host = "127.0.0.1"
port = $PG_PORT
database = "postgres"
user = "postgres"
password = "env:BENCH_PG_PASSWORD"
tags = { env = "bench" }
[[masking.rules]]
name = "emails"
detector = "email"
[[masking.rules]]
name = "cards"
detector = "payment_card"
strategy = "partial"
keep_last = 4
[[masking.rules]]
name = "ssn"
detector = "us_ssn"
[[masking.rules]]
name = "filler"
column = "public.pgbench_accounts.filler"
EOF
BENCH_PG_PASSWORD=$PW GATEHOUSE_LOG=warn "$GATEHOUSE" serve --config "$WORK/gatehouse.toml" 2>"$WORK/gatehouse.log" &
GH_PID=$!
PIDS+=($GH_PID)

# The same gateway with its features at their cheapest: one allow-all policy, no masking, no
# audit log.
mkdir -p "$WORK/bare-policies"
printf '@id("allow-all")\npermit(principal, action, resource);\n' > "$WORK/bare-policies/all.cedar"
sed -e "s|$WORK/gh\"|$WORK/gh-bare\"|" -e "s|:$API_PORT\"|:$BARE_API_PORT\"|" -e "s|:$GH_PORT\"|:$BARE_PORT\"|" \
    -e "s|$PWD/examples/policies/|$WORK/bare-policies/|" -e '/^\[\[masking.rules\]\]/,$d' \
    -e 's|^durability = .*|durability = "off"|' \
    "$WORK/gatehouse.toml" > "$WORK/gatehouse-bare.toml"
BENCH_PG_PASSWORD=$PW GATEHOUSE_LOG=warn "$GATEHOUSE" serve --config "$WORK/gatehouse-bare.toml" 2>"$WORK/gatehouse-bare.log" &
BARE_PID=$!
PIDS+=($BARE_PID)
for _ in $(seq 100); do [ -f "$WORK/gh/admin.token" ] && [ -f "$WORK/gh-bare/admin.token" ] && break; sleep 0.1; done
TOKEN=$(GATEHOUSE_URL=http://127.0.0.1:$API_PORT GATEHOUSE_TOKEN=$(cat "$WORK/gh/admin.token") "$GATEHOUSE" token create --name bench --group agents 2>/dev/null)
BARE_TOKEN=$(GATEHOUSE_URL=http://127.0.0.1:$BARE_API_PORT GATEHOUSE_TOKEN=$(cat "$WORK/gh-bare/admin.token") "$GATEHOUSE" token create --name bench --group agents 2>/dev/null)
sleep 0.5

port_of() { case $1 in direct) echo "$PG_PORT";; pgbouncer) echo "$BOUNCER_PORT";; gatehouse) echo "$GH_PORT";; bare) echo "$BARE_PORT";; esac; }
pass_of() { case $1 in gatehouse) echo "$TOKEN";; bare) echo "$BARE_TOKEN";; *) echo "$PW";; esac; }
pid_of() { case $1 in bare) echo "$BARE_PID";; pgbouncer) echo "$BOUNCER_PID";; *) echo "$GH_PID";; esac; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$(pid_of "$1")/stat"; }
TICK=$(getconf CLK_TCK)
# Context switches of all the process's threads: each is a thread that slept being woken (a
# hand-off between threads) or one preempted, so switches per transaction show hand-offs.
switches() { cat /proc/"$(pid_of "$1")"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}'; }

RESULTS="$WORK/results.tsv"
: > "$RESULTS"
run() { # target mode script clients -> tps, latency ms
  local target=$1 mode=$2 script=$3 clients=$4 flags=()
  [ "$script" = select ] && flags+=(-S)
  [ "$CONNECT" = 1 ] && flags+=(-C)
  local jobs=$(( clients < 2 ? 1 : 2 ))
  PGPASSWORD=$(pass_of "$target") PGSSLMODE=require pgbench -h 127.0.0.1 -p "$(port_of "$target")" -U postgres \
    -M "$mode" "${flags[@]}" -c "$clients" -j "$jobs" -T "$DURATION" postgres 2>&1 |
    awk '/^latency average/ {lat=$4} /^tps/ {tps=$3} /failed transactions: [1-9]/ {fail=1} END {if (fail) print "FAILED"; else printf "%s\t%s\n", tps, lat}'
}

for round in $(seq "$ROUNDS"); do
  for script in $SCRIPTS; do for mode in $MODES; do for clients in $CLIENTS; do
    for target in $TARGETS; do
      before=$(cpu_ticks "$target"); switched=$(switches "$target")
      out=$(run "$target" "$mode" "$script" "$clients")
      after=$(cpu_ticks "$target"); switched=$(( $(switches "$target") - switched ))
      [ "$out" = FAILED ] && { log "pgbench reported failed transactions: $target $mode $script $clients"; exit 1; }
      tps=${out%%$'\t'*}; lat=${out##*$'\t'}
      cpu_us="" per_txn=""
      if [ "$target" != direct ]; then
        cpu_us=$(awk -v t=$((after - before)) -v tick="$TICK" -v tps="$tps" -v d="$DURATION" 'BEGIN { printf "%.1f", t / tick * 1e6 / (tps * d) }')
        per_txn=$(awk -v n="$switched" -v tps="$tps" -v d="$DURATION" 'BEGIN { printf "%.2f", n / (tps * d) }')
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$script" "$mode" "$clients" "$target" "$tps" "$lat" >> "$RESULTS"
      [ -n "$cpu_us" ] && printf 'cpu\t%s\t%s\t%s\t%s\t%s\n' "$script" "$mode" "$clients" "$cpu_us" "$target" >> "$RESULTS"
      log "round $round: $script $mode c=$clients $target: $tps tps, $lat ms${cpu_us:+, process CPU ${cpu_us} us/txn, ${per_txn} context switches/txn}"
    done
  done; done; done
done

python3 - "$RESULTS" "$TARGETS" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])]
targets = sys.argv[2].split()
tps = collections.defaultdict(list); lat = collections.defaultdict(list); cpu = collections.defaultdict(list)
for r in rows:
    if r[0] == 'cpu':
        cpu[tuple(r[1:4]) + (r[5] if len(r) > 5 else 'gatehouse',)].append(float(r[4]))
    else:
        key = tuple(r[1:4]); tps[key + (r[4],)].append(float(r[5])); lat[key + (r[4],)].append(float(r[6]))
keys = sorted({k[:3] for k in tps}, key=lambda k: (k[0], k[1], -int(k[2])))
gateways = [t for t in ('gatehouse', 'bare') if t in targets]
# Ratios against whichever baselines ran; gatehouse/bare is what the features cost.
baselines = [b for b in ('direct', 'pgbouncer') if b in targets]
pairs = [(g, b) for g in gateways for b in baselines]
if len(gateways) == 2:
    pairs.append(('gatehouse', 'bare'))
latency_base = baselines[0] if baselines else None
head = "| script | mode | clients | " + " | ".join(f"{t} tps" for t in targets) + " | "
head += "".join(f"{g}/{b} | " for g, b in pairs)
# CPU per transaction of each proxy's own process (PgBouncer: one thread), from /proc.
proxies = gateways + (['pgbouncer'] if 'pgbouncer' in targets else [])
head += f"added latency over {latency_base or '-'} (ms) | " + " | ".join(f"{g} CPU/txn (us)" for g in proxies) + " |"
print(head); print("|" + "---|" * (head.count("|") - 1))
for k in keys:
    med = {t: statistics.median(tps[k + (t,)]) for t in targets if tps.get(k + (t,))}
    mlat = {t: statistics.median(lat[k + (t,)]) for t in targets if lat.get(k + (t,))}
    cells = [k[0], k[1], k[2]] + [f"{med[t]:.0f}" if t in med else "-" for t in targets]
    for g, b in pairs:
        cells.append(f"{med[g] / med[b]:.2f}x" if g in med and med.get(b) else "-")
    cells.append(f"{mlat[gateways[0]] - mlat[latency_base]:+.3f}" if gateways and latency_base else "-")
    for g in proxies:
        cells.append(f"{statistics.median(cpu[k + (g,)]):.0f}" if cpu.get(k + (g,)) else "-")
    print("| " + " | ".join(cells) + " |")
EOF
