# Shared by the benchmark scripts (sourced, not run): the release build, a work directory
# removed at exit, helpers, and starting background processes that are stopped at exit.
#   bench_setup <name>      sets GATEHOUSE, PGBIN, WORK, PIDS and the exit trap
#                           (GATEHOUSE_BIN=path: run that binary instead of building one,
#                           to compare two builds with the same script)
#   as_pg CMD...            runs CMD as the postgres user when root
#   free_port               prints a free TCP port on 127.0.0.1

log() { printf '%s\n' "$*" >&2; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_setup() {
  if [ -n "${GATEHOUSE_BIN:-}" ]; then
    GATEHOUSE=$GATEHOUSE_BIN
    log "using $GATEHOUSE"
  else
    log "building gatehouse (release)"
    cargo build --release -q -p gatehouse
    GATEHOUSE=${CARGO_TARGET_DIR:-target}/release/gatehouse
  fi
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  WORK=$(mktemp -d "/tmp/gatehouse-$1.XXXXXX")
  chmod 755 "$WORK"
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Processes started through runuser (PgBouncer) do not get the signal sent to runuser:
  # stop everything still running on this run's files.
  pkill -f -- "$WORK/" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
