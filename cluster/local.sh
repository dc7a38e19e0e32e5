#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, to try `srcompress run --address ...` and the Jobs API without a
# real cluster. Like cluster/raycluster.yaml it has a head with 0 CPUs (no trials there) and separate worker
# nodes, each its own raylet with its own CPU count and memory limits, all on loopback.
#
#   cluster/local.sh [start]   start the head and the workers (refuses when this cluster already runs)
#   cluster/local.sh status    `ray status` of this cluster
#   cluster/local.sh stop      stop this cluster's processes only (not other Ray clusters on the machine)
#
# Then:  srcompress submit search_spaces/demo.yaml --address http://127.0.0.1:8265   (Jobs API; status/logs/stop)
#        srcompress run search_spaces/demo.yaml --address 127.0.0.1:6390            (driver on this shell)
# All nodes run on this machine, so they share its filesystem: data, weights and storage.path are seen by all.
#
# Settings (environment variables, defaults in brackets):
#   SRCOMPRESS_LOCAL_WORKERS [2]             worker nodes
#   SRCOMPRESS_LOCAL_CPUS [1]                CPUs per worker node
#   SRCOMPRESS_LOCAL_OBJECT_STORE_MB [256]   object store per node (Ray would take 30% of RAM per node)
#   SRCOMPRESS_LOCAL_MEMORY_MB [2048]        schedulable memory per worker node
#   SRCOMPRESS_LOCAL_PORT [6390]             GCS port of the head (6379 is left to other clusters);
#                                            PORT+1 is the Ray client port, PORT+10.. the dashboard agents
#   SRCOMPRESS_LOCAL_DASHBOARD_PORT [8265]   dashboard and Jobs API, bound to 127.0.0.1 only
#   SRCOMPRESS_LOCAL_DIR [/tmp/srcompress-ray-$USER]   Ray temp dir of this cluster (sessions, logs, sockets; worker
#                                            node N uses DIR/nodeN;
#                                            short, because socket paths are limited to ~107 characters)
#   SRCOMPRESS_LOCAL_TRIAL_SLOTS [1000]      units of the head's srcompress_trial resource (one per running
#                                            trial driver; the CPUs of the workers are the real limit)
#   RAY_BIN                                  ray executable; default: the repository's .venv/bin/ray, else PATH
#                                            (its folder goes first on PATH, so job entrypoints find the same
#                                            python and srcompress)
#
# Authentication: token auth stays on, as on the real clusters (RAY_AUTH_MODE=token unless you set it): Ray
# binds its GCS and raylets to the machine's address, not only to loopback, so the token is what keeps other
# hosts out. The token comes from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH (created here when
# missing), else ~/.ray/auth_token (created by `ray get-auth-token --generate` when missing). Clients on this
# machine read the same file. Tests that don't want auth start the cluster and their clients with
# RAY_AUTH_MODE=disabled.
#
# Stopping: `ray stop` would kill every Ray process of the user, including other Ray clusters on the machine.
# `stop` signals only this cluster's processes: those that name SRCOMPRESS_LOCAL_DIR on their command line or
# hold a file under it open (each Ray process logs there; agents rename themselves, so command lines alone miss
# them). Anything else you keep open under that folder (a `tail -f` of a log) is stopped too. Linux only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${RAY_BIN:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/ray" ]]; then RAY_BIN="$ROOT/.venv/bin/ray"; else RAY_BIN="$(command -v ray || true)"; fi
fi
[[ -n "$RAY_BIN" && -x "$RAY_BIN" ]] || { echo "local.sh: no ray executable; run 'make setup' or set RAY_BIN" >&2; exit 2; }
PATH="$(dirname "$RAY_BIN"):$PATH"

WORKERS="${SRCOMPRESS_LOCAL_WORKERS:-2}"
CPUS="${SRCOMPRESS_LOCAL_CPUS:-1}"
OBJ_MB="${SRCOMPRESS_LOCAL_OBJECT_STORE_MB:-256}"
MEM_MB="${SRCOMPRESS_LOCAL_MEMORY_MB:-2048}"
PORT="${SRCOMPRESS_LOCAL_PORT:-6390}"
DASH_PORT="${SRCOMPRESS_LOCAL_DASHBOARD_PORT:-8265}"
DIR="${SRCOMPRESS_LOCAL_DIR:-/tmp/srcompress-ray-${USER:-$(id -u)}}"
# Custom resource the search's trial drivers hold (orchestrator.search.TRIAL_RESOURCE; connect_ray checks it).
TRIAL_RESOURCE="srcompress_trial"
TRIAL_SLOTS="${SRCOMPRESS_LOCAL_TRIAL_SLOTS:-1000}"
ADDRESS="127.0.0.1:$PORT"
MB=$((1024 * 1024))

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export RAY_USAGE_STATS_ENABLED=0

die() { echo "local.sh: $*" >&2; exit 2; }

# PIDs of this cluster's processes: those naming $DIR on their command line or holding a file under it open
# (every Ray process of a node logs into $DIR/session_*/logs). See "Stopping".
cluster_pids() {
  {
    find /proc/[0-9]*/fd -maxdepth 1 -lname "$DIR/*" 2>/dev/null | cut -d/ -f3
    pgrep -f -- "$DIR/" || true
  } | sort -u | grep -vx -e "$$" -e "$BASHPID" || true
}

ensure_token() {
  [[ "$RAY_AUTH_MODE" == "token" ]] || return 0
  [[ -n "${RAY_AUTH_TOKEN:-}" ]] && return 0
  if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
      mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
      (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$RAY_AUTH_TOKEN_PATH")
      echo "local.sh: wrote a new Ray auth token to $RAY_AUTH_TOKEN_PATH"
    fi
  else
    "$RAY_BIN" get-auth-token --generate >/dev/null
  fi
}

start() {
  [[ -z "$(cluster_pids)" ]] || die "a local cluster already runs in $DIR; run 'cluster/local.sh stop' first"
  [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "SRCOMPRESS_LOCAL_WORKERS=$WORKERS; use a positive integer"
  ensure_token
  mkdir -p "$DIR"
  common=(--node-ip-address 127.0.0.1 --disable-usage-stats --num-gpus 0)

  # 1. Head: GCS, dashboard (Jobs API) and drivers only; no CPUs, so no Train worker lands on it. Each search
  #    trial's driver holds one unit of TRIAL_RESOURCE (orchestrator.search), which only the head offers.
  "$RAY_BIN" start --head "${common[@]}" --temp-dir "$DIR" --port "$PORT" --ray-client-server-port $((PORT + 1)) \
    --num-cpus 0 --resources "{\"$TRIAL_RESOURCE\": $TRIAL_SLOTS}" \
    --object-store-memory $((OBJ_MB * MB)) --memory $((MEM_MB * MB)) \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" \
    --dashboard-agent-listen-port $((PORT + 10))

  # 2. Workers: one raylet each, with its own CPUs and memory caps (distinct agent ports on one machine), and its
  #    own temp dir as on separate machines: nodes sharing one would each unpack a job's working_dir into the same
  #    runtime_resources folder, deleting it under the job's running driver (its cwd vanishes).
  for i in $(seq 1 "$WORKERS"); do
    "$RAY_BIN" start "${common[@]}" --temp-dir "$DIR/node$i" --address "$ADDRESS" --num-cpus "$CPUS" \
      --object-store-memory $((OBJ_MB * MB)) --memory $((MEM_MB * MB)) \
      --dashboard-agent-listen-port $((PORT + 10 + i))
  done
  echo "local.sh: Ray at $ADDRESS (head 0 CPUs + $WORKERS workers x $CPUS CPUs), dashboard and Jobs API at" \
    "http://127.0.0.1:$DASH_PORT, RAY_AUTH_MODE=$RAY_AUTH_MODE"
  if [[ "$RAY_AUTH_MODE" == "token" ]]; then
    # shellcheck disable=SC2088  # shown to the user, not expanded
    local src="~/.ray/auth_token"
    [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] && src="RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    [[ -n "${RAY_AUTH_TOKEN:-}" ]] && src="RAY_AUTH_TOKEN"
    echo "local.sh: clients (srcompress submit/status/logs/stop, ray job ...) authenticate with the token in $src"
  fi
}

stop() {
  local pids
  pids="$(cluster_pids)"
  if [[ -z "$pids" ]]; then echo "local.sh: no local cluster runs in $DIR"; return 0; fi
  # shellcheck disable=SC2086  # one PID per word
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 20); do
    [[ -z "$(cluster_pids)" ]] && { echo "local.sh: stopped"; return 0; }
    sleep 0.5
  done
  pids="$(cluster_pids)"
  # shellcheck disable=SC2086
  [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
  echo "local.sh: stopped (some processes needed SIGKILL)"
}

status() {
  [[ -n "$(cluster_pids)" ]] || { echo "local.sh: no local cluster runs in $DIR"; return 1; }
  "$RAY_BIN" status --address "$ADDRESS"
}

[[ -d /proc/self ]] || die "needs Linux /proc to tell this cluster's processes apart; elsewhere use 'ray start'/'ray stop'"
case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "unknown command '$1'; use start, stop or status" ;;
esac
