#!/usr/bin/env bash
# Benchmarks, side by side with the servers people would otherwise run.
#
#   benches/run.sh            full run: 3 rounds of 10 s per comparison
#   benches/run.sh --quick    2 s, one round: keeps the scripts from rotting (CI)
#
# Installs what it needs from Debian (idempotently), builds release binaries,
# pins every server to CPU 0 and every load generator to CPU 1, runs the peers
# and Switchboard back to back in each round, and writes
# benches/results/latest.json and (full runs only) docs/benchmarks.md.new; then
# benches/databases.sh (the database ports on MariaDB) in the same mode.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then
  DUR=2; ROUNDS=1; HOSTS=2000; SERVICES=200; SCALE_HOSTS=20000; SCALE_SERVICES=2000; CHANGES=30; REPO_MB=8
else
  DUR=10; ROUNDS=3; HOSTS=10000; SERVICES=1000; SCALE_HOSTS=100000; SCALE_SERVICES=10000; CHANGES=200; REPO_MB=100
fi
ZONE=bench.example

need=()
for p in dnsperf:dnsperf nsd:nsd knotd:knot named:bind9 haproxy:haproxy nginx:nginx wrk:wrk dig:dnsutils curl:curl git:git ssh:openssh-client sshd:openssh-server openssl:openssl etcd:etcd-server; do
  cmd=${p%%:*}; pkg=${p#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

cargo build --release --quiet -p switchboard-directory -p switchboard-sidecar -p switchboard-bench
BIN=$ROOT/target/release

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

SERVER_CPU="taskset -c 0"; LOAD_CPU="taskset -c 1"
[ "$(nproc)" -ge 2 ] || { SERVER_CPU=""; LOAD_CPU=""; }

# Below the kernel's ephemeral range (32768+), so no client socket holds our ports.
PORT=$((20000 + RANDOM % 10000))
# Sets $PORT to a fresh port (no subshell, so the counter moves).
next_port() { PORT=$((PORT + 1)); }

wait_answer() { # port name type [pid] -> waits until the server answers, prints seconds waited
  local port=$1 name=$2 type=$3 pid=${4:-} start now
  start=$(date +%s.%N)
  for _ in $(seq 1 6000); do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "bench: the server on $port (pid $pid) exited" >&2
      tail -5 "$WORK/server-$port.log" >&2 2>/dev/null || true
      return 1
    fi
    if dig @127.0.0.1 -p "$port" +norec +time=1 +tries=1 +short "$name" "$type" 2>/dev/null | grep -qv '^;'; then
      now=$(date +%s.%N); awk -v a="$start" -v b="$now" 'BEGIN {printf "%.3f\n", b - a}'; return 0
    fi
    sleep 0.01
  done
  echo "bench: server on $port never answered $name $type" >&2; return 1
}

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
spread() { sort -n | awk 'NR==1{min=$1} {max=$1} END {printf "%s-%s", min, max}'; }

# ---- load ----------------------------------------------------------------------
mkdir -p "$WORK/zones" "$WORK/scale" "$WORK/empty-zones"
ADMIN_PUB=$("$BIN/switchboard-directory" --json keygen --out "$WORK/admin.pem" | sed 's/.*"public_key":"\([^"]*\)".*/\1/')
"$BIN/gen-zone" $ZONE $HOSTS $SERVICES "$WORK/zones" "$ADMIN_PUB"
"$BIN/gen-zone" $ZONE $SCALE_HOSTS $SCALE_SERVICES "$WORK/scale" "$ADMIN_PUB"

# The same records, flattened, for the peers.
flatten() { # srcdir outfile
  local dns http pid
  next_port; dns=$PORT; next_port; http=$PORT
  "$BIN/switchboard-directory" serve --zones "$1" --data "$WORK/flat-data-$dns" --dns 127.0.0.1:$dns --http 127.0.0.1:$http >/dev/null 2>&1 &
  pid=$!
  wait_answer $dns ns1.$ZONE A >/dev/null
  "$BIN/switchboard-directory" --server http://127.0.0.1:$http zone export $ZONE --flat > "$2"
  kill $pid; wait $pid 2>/dev/null || true
}
flatten "$WORK/zones" "$WORK/flat.zone"
flatten "$WORK/scale" "$WORK/scale-flat.zone"

# ---- servers -------------------------------------------------------------------
# Each start_* leaves the process id in $SPID (no subshell).
start_switchboard() { # zonesdir port [datadir]
  local data=${3:-$WORK/sb-data-$2}
  # Below the DNS ports, and below the kernel's ephemeral range (32768+) too: a
  # client socket holding the admin port made the directory exit at start.
  SB_API=127.0.0.1:$(( $2 - 10000 ))
  $SERVER_CPU "$BIN/switchboard-directory" serve --zones "$1" --data "$data" --dns 127.0.0.1:$2 --http $SB_API --udp-workers 1 >"$WORK/server-$2.log" 2>&1 &
  SPID=$!
}
start_nsd() { # zonefile port
  local d=$WORK/nsd-$2; mkdir -p $d
  cat > $d/nsd.conf <<CONF
server:
  ip-address: 127.0.0.1@$2
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$d"
  database: ""
  pidfile: "$d/nsd.pid"
  xfrdfile: "$d/xfrd.state"
  zonelistfile: "$d/zone.list"
  verbosity: 0
  hide-version: yes
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: $ZONE
  zonefile: "$1"
CONF
  $SERVER_CPU nsd -d -c $d/nsd.conf >/dev/null 2>&1 &
  SPID=$!
}
start_knot() { # zonefile port
  local d=$WORK/knot-$2; mkdir -p $d
  cat > $d/knot.conf <<CONF
server:
  rundir: "$d"
  user: root:root
  listen: 127.0.0.1@$2
  background-workers: 1
  udp-workers: 1
  tcp-workers: 1
database:
  storage: "$d"
log:
  - target: stderr
    any: error
zone:
  - domain: $ZONE
    file: "$1"
    storage: "$d"
    zonefile-sync: -1
    journal-content: none
CONF
  $SERVER_CPU knotd -c $d/knot.conf >/dev/null 2>&1 &
  SPID=$!
}
start_bind() { # zonefile port
  local d=$WORK/bind-$2; mkdir -p $d
  cp "$1" $d/zone.db
  cat > $d/named.conf <<CONF
options {
  directory "$d";
  listen-on port $2 { 127.0.0.1; };
  listen-on-v6 { none; };
  recursion no;
  pid-file "$d/named.pid";
  minimal-responses no;
  max-records-per-type 0;
  max-types-per-name 0;
};
controls { };
zone "$ZONE" { type primary; file "$d/zone.db"; };
CONF
  $SERVER_CPU named -g -n 1 -c $d/named.conf >/dev/null 2>&1 &
  SPID=$!
}

dnsperf_qps() { # port [extra args] -> qps
  local port=$1; shift
  $LOAD_CPU dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/zones/queries.txt" -l $DUR -c 20 -q 200 "$@" 2>/dev/null \
    | awk '/Queries per second/ {printf "%d", $4}'
}

# How busy a CPU was between two of its /proc/stat lines, in percent.
cpu_busy() { printf '%s\n%s\n' "$1" "$2" | awk '{idle=$5+$6; t=0; for (i=2; i<=NF; i++) t+=$i; if (NR==1) {i1=idle; t1=t} else printf "%d", (t>t1) ? 100-100*(idle-i1)/(t-t1) : 0}'; }

# dnsperf on one core cannot always keep a server on the other core busy: each
# round also records how busy each CPU was, so a server's rate per busy core shows
# what it would do with the load generator out of the way.
declare -A QPS BUSY LOADBUSY
SERVERS="nsd knot bind switchboard"
for round in $(seq 1 $ROUNDS); do
  for s in $SERVERS; do
    next_port; port=$PORT
    case $s in
      switchboard) start_switchboard "$WORK/zones" $port; pid=$SPID ;;
      nsd) start_nsd "$WORK/flat.zone" $port; pid=$SPID ;;
      knot) start_knot "$WORK/flat.zone" $port; pid=$SPID ;;
      bind) start_bind "$WORK/flat.zone" $port; pid=$SPID ;;
    esac
    PIDS+=($pid)
    wait_answer $port h1.node.$ZONE A $pid >/dev/null
    c0=$(grep '^cpu0 ' /proc/stat); c1=$(grep '^cpu1 ' /proc/stat)
    q=$(dnsperf_qps $port)
    b0=$(cpu_busy "$c0" "$(grep '^cpu0 ' /proc/stat)"); b1=$(cpu_busy "$c1" "$(grep '^cpu1 ' /proc/stat)")
    QPS[$s]="${QPS[$s]:-} $q"; BUSY[$s]="${BUSY[$s]:-} $b0"; LOADBUSY[$s]="${LOADBUSY[$s]:-} $b1"
    echo "bench: round $round $s ${q} q/s, server CPU ${b0}% busy, dnsperf CPU ${b1}%"
    kill $pid; wait $pid 2>/dev/null || true
  done
done

# Latency at half of BIND's peak rate, same order.
BIND_MED=$(echo ${QPS[bind]} | tr ' ' '\n' | median)
HALF=$(( ${BIND_MED%.*} / 2 )); [ $HALF -gt 0 ] || HALF=1000
declare -A P99
for s in $SERVERS; do
  next_port; port=$PORT
  case $s in
    switchboard) start_switchboard "$WORK/zones" $port; pid=$SPID ;;
    nsd) start_nsd "$WORK/flat.zone" $port; pid=$SPID ;;
    knot) start_knot "$WORK/flat.zone" $port; pid=$SPID ;;
    bind) start_bind "$WORK/flat.zone" $port; pid=$SPID ;;
  esac
  PIDS+=($pid)
  wait_answer $port h1.node.$ZONE A >/dev/null
  P99[$s]=$($LOAD_CPU dnsperf -s 127.0.0.1 -p $port -d "$WORK/zones/queries.txt" -l $DUR -Q $HALF -v 2>/dev/null \
    | awk '/^> / {print $NF * 1000}' | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; if (NR) printf "%.3f", a[i]; else print "0"}')
  echo "bench: latency $s p99 ${P99[$s]} ms at $HALF q/s"
  kill $pid; wait $pid 2>/dev/null || true
done

# ---- scale: memory and start to first answer -----------------------------------
# Every round seeds a fresh store; the figures are the medians of the rounds.
declare -A RSS START RSS_ALL START_ALL
probe="h$((SCALE_HOSTS - 1)).node.$ZONE"
SCALE_RUNS="nsd knot switchboard switchboard-store switchboard-rebuild"
for r in $(seq 1 $ROUNDS); do
for s in $SCALE_RUNS; do
  next_port; port=$PORT
  case $s in
    switchboard) rm -rf "$WORK/scale-data"; start_switchboard "$WORK/scale" $port "$WORK/scale-data"; pid=$SPID ;;
    switchboard-store|switchboard-rebuild) start_switchboard "$WORK/empty-zones" $port "$WORK/scale-data"; pid=$SPID ;;
    nsd) start_nsd "$WORK/scale-flat.zone" $port; pid=$SPID ;;
    knot) start_knot "$WORK/scale-flat.zone" $port; pid=$SPID ;;
  esac
  PIDS+=($pid)
  start_s=$(wait_answer $port $probe A)
  sleep 1
  rss=$(rss_mb $pid)
  START_ALL[$s]+="$start_s "; RSS_ALL[$s]+="$rss "
  echo "bench: round $r scale $s first answer $start_s s, RSS $rss MB"
  if [ $s = switchboard ] && [ $r = 1 ]; then
    # Change to answer on the large zone, through the signed API.
    api=$SB_API
    CHANGE_SCALE=$($LOAD_CPU "$BIN/change-latency" $api 127.0.0.1:$port "$WORK/admin.pem" $ZONE $SCALE_HOSTS $CHANGES)
    echo "bench: change to answer at $SCALE_HOSTS hosts: $CHANGE_SCALE"
  fi
  if [ $s = switchboard-store ]; then
    # One change drops the view saved at the last clean stop, and kill -9 saves
    # none: the next start (switchboard-rebuild) builds the view from the model.
    $LOAD_CPU "$BIN/change-latency" $SB_API 127.0.0.1:$port "$WORK/admin.pem" $ZONE $SCALE_HOSTS 1 >/dev/null
    kill -9 $pid
  fi
  kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
done
done
for s in $SCALE_RUNS; do
  START[$s]=$(echo ${START_ALL[$s]} | tr ' ' '\n' | median)
  RSS[$s]=$(echo ${RSS_ALL[$s]} | tr ' ' '\n' | median)
  echo "bench: scale $s first answer ${START[$s]} s ($(echo ${START_ALL[$s]} | tr ' ' '\n' | spread)), RSS ${RSS[$s]} MB"
done

# ---- zone transfers: AXFR of the scale zone, IXFR of one change ------------------
# Switchboard, Knot and BIND as primaries of the same zone (the peers load its flat
# export), each transfer signed with the same TSIG key; then Knot as Switchboard's
# secondary: change acknowledged -> Knot answers it (NOTIFY, then IXFR).
XFR_KEY=bench-xfr
start_knot_primary() { # zonefile port
  local d=$WORK/knotp-$2; mkdir -p $d
  cat > $d/knot.conf <<CONF
server:
  rundir: "$d"
  user: root:root
  listen: 127.0.0.1@$2
  background-workers: 1
  udp-workers: 1
  tcp-workers: 1
database:
  storage: "$d"
log:
  - target: stderr
    any: error
key:
  - id: $XFR_KEY
    algorithm: hmac-sha256
    secret: $XFR_SECRET
acl:
  - id: transfer
    key: $XFR_KEY
    action: transfer
zone:
  - domain: $ZONE
    file: "$1"
    storage: "$d"
    zonefile-sync: -1
    journal-content: none
    acl: transfer
CONF
  $SERVER_CPU knotd -c $d/knot.conf >/dev/null 2>&1 &
  SPID=$!
}
start_bind_primary() { # zonefile port
  local d=$WORK/bindp-$2; mkdir -p $d
  cp "$1" $d/zone.db
  cat > $d/named.conf <<CONF
options {
  directory "$d";
  listen-on port $2 { 127.0.0.1; };
  listen-on-v6 { none; };
  recursion no;
  pid-file "$d/named.pid";
  max-records-per-type 0;
  max-types-per-name 0;
};
controls { };
key "$XFR_KEY" { algorithm hmac-sha256; secret "$XFR_SECRET"; };
zone "$ZONE" { type primary; file "$d/zone.db"; allow-transfer { key $XFR_KEY; }; };
CONF
  $SERVER_CPU named -g -n 1 -c $d/named.conf >/dev/null 2>&1 &
  SPID=$!
}
start_knot_secondary() { # primary-port port
  local d=$WORK/knots-$2; mkdir -p $d
  cat > $d/knot.conf <<CONF
server:
  rundir: "$d"
  user: root:root
  listen: 127.0.0.1@$2
  background-workers: 1
  udp-workers: 1
  tcp-workers: 1
database:
  storage: "$d"
log:
  - target: stderr
    any: error
key:
  - id: $XFR_KEY
    algorithm: hmac-sha256
    secret: $XFR_SECRET
remote:
  - id: directory
    address: 127.0.0.1@$1
    key: $XFR_KEY
acl:
  - id: notify
    address: 127.0.0.1
    key: $XFR_KEY
    action: notify
zone:
  - domain: $ZONE
    storage: "$d"
    master: directory
    acl: notify
    zonefile-sync: -1
CONF
  $LOAD_CPU knotd -c $d/knot.conf >/dev/null 2>&1 &
  SPID=$!
}
next_port; port=$PORT; start_switchboard "$WORK/empty-zones" $port "$WORK/scale-data"; pid=$SPID; PIDS+=($pid)
wait_answer $port $probe A $pid >/dev/null
XFR_SB_PORT=$port; XFR_SB_API=$SB_API; XFR_SB_PID=$pid
XFR_SECRET=$("$BIN/switchboard-directory" --server http://$SB_API --key "$WORK/admin.pem" --json zone tsig add $ZONE $XFR_KEY | sed 's/.*"secret":"\([^"]*\)".*/\1/')
declare -A AXFR
for s in knot bind switchboard; do
  case $s in
    switchboard) port=$XFR_SB_PORT ;;
    knot) next_port; port=$PORT; start_knot_primary "$WORK/scale-flat.zone" $port; PIDS+=($SPID) ;;
    bind) next_port; port=$PORT; start_bind_primary "$WORK/scale-flat.zone" $port; PIDS+=($SPID) ;;
  esac
  wait_answer $port $probe A >/dev/null
  AXFR[$s]=$($LOAD_CPU "$BIN/axfr" 127.0.0.1:$port $ZONE $XFR_KEY "$XFR_SECRET" $ROUNDS) || {
    echo "bench: the AXFR from $s failed; the server's log ends:" >&2
    tail -20 "$WORK/server-$port.log" >&2 2>/dev/null || true
    exit 1
  }
  echo "bench: AXFR of $SCALE_HOSTS hosts from $s: ${AXFR[$s]}"
  [ $s = switchboard ] || { kill $SPID; wait $SPID 2>/dev/null || true; }
done
# Knot as the secondary: the time it takes is NOTIFY, SOA query and IXFR from
# Switchboard (about a millisecond, in its log) plus Knot applying the change,
# which grows with the zone (its log: "zone updated, N seconds").
ixfr_latency() { # sb-dns-port sb-api hosts -> change-latency JSON
  local kport kpid out
  next_port; kport=$PORT; start_knot_secondary $1 $kport; kpid=$SPID; PIDS+=($kpid)
  "$BIN/switchboard-directory" --server http://$2 --key "$WORK/admin.pem" zone secondary add $ZONE 127.0.0.1:$kport --tsig $XFR_KEY >/dev/null
  wait_answer $kport h$(( $3 - 1 )).node.$ZONE A >/dev/null
  out=$($LOAD_CPU "$BIN/change-latency" $2 127.0.0.1:$kport "$WORK/admin.pem" $ZONE $3 $CHANGES)
  kill $kpid; wait $kpid 2>/dev/null || true
  echo "$out"
}
IXFR_SCALE=$(ixfr_latency $XFR_SB_PORT $XFR_SB_API $SCALE_HOSTS)
echo "bench: change acknowledged -> Knot secondary answers it, $SCALE_HOSTS hosts: $IXFR_SCALE"
kill $XFR_SB_PID; wait $XFR_SB_PID 2>/dev/null || true
next_port; port=$PORT; start_switchboard "$WORK/zones" $port; pid=$SPID; PIDS+=($pid)
wait_answer $port h1.node.$ZONE A $pid >/dev/null
"$BIN/switchboard-directory" --server http://$SB_API --key "$WORK/admin.pem" zone tsig add $ZONE $XFR_KEY --secret "$XFR_SECRET" >/dev/null
IXFR_SMALL=$(ixfr_latency $port $SB_API $HOSTS)
echo "bench: change acknowledged -> Knot secondary answers it, $HOSTS hosts: $IXFR_SMALL"
kill $pid; wait $pid 2>/dev/null || true

next_port; port=$PORT; start_switchboard "$WORK/zones" $port; pid=$SPID; PIDS+=($pid)
wait_answer $port h1.node.$ZONE A >/dev/null
api=$SB_API
CHANGE_SMALL=$($LOAD_CPU "$BIN/change-latency" $api 127.0.0.1:$port "$WORK/admin.pem" $ZONE $HOSTS $CHANGES)
echo "bench: change to answer at $HOSTS hosts: $CHANGE_SMALL"
kill $pid; wait $pid 2>/dev/null || true

# ---- etcd: two directory servers sharing a three-member cluster -------------------
# The members as tests/etcd.rs starts them (docs/high-availability.md), on the
# server CPU; directory A takes the changes, B answers DNS. Then the same
# changes through one server on etcd, beside the sled run just above.
ETCD_INITIAL=""; ETCD_CLIENTS=""
for m in 0 1 2; do
  next_port; ETCD_PEER[$m]=$PORT; next_port; ETCD_CLIENT[$m]=$PORT
  ETCD_INITIAL+="${ETCD_INITIAL:+,}m$m=http://127.0.0.1:${ETCD_PEER[$m]}"
  ETCD_CLIENTS+="${ETCD_CLIENTS:+,}127.0.0.1:${ETCD_CLIENT[$m]}"
done
for m in 0 1 2; do
  $SERVER_CPU etcd --name m$m --data-dir "$WORK/etcd-m$m" \
    --listen-client-urls http://127.0.0.1:${ETCD_CLIENT[$m]} --advertise-client-urls http://127.0.0.1:${ETCD_CLIENT[$m]} \
    --listen-peer-urls http://127.0.0.1:${ETCD_PEER[$m]} --initial-advertise-peer-urls http://127.0.0.1:${ETCD_PEER[$m]} \
    --initial-cluster "$ETCD_INITIAL" --initial-cluster-state new --initial-cluster-token bench >"$WORK/etcd-m$m.log" 2>&1 &
  PIDS+=($!); ETCD_PIDS+=($!)
done
for _ in $(seq 1 300); do
  curl -s -m 1 http://127.0.0.1:${ETCD_CLIENT[0]}/health | grep -q '"health":"true"' && break
  sleep 0.1
done
start_etcd_dir() { # zonesdir port
  SB_API=127.0.0.1:$(( $2 - 10000 ))
  $SERVER_CPU "$BIN/switchboard-directory" serve --zones "$1" --data "$WORK/sb-etcd-$2" --store "etcd://$ETCD_CLIENTS/bench" \
    --dns 127.0.0.1:$2 --http $SB_API --udp-workers 1 >"$WORK/server-$2.log" 2>&1 &
  SPID=$!
}
next_port; EA=$PORT; start_etcd_dir "$WORK/zones" $EA; EA_PID=$SPID; EA_API=$SB_API; PIDS+=($EA_PID)
wait_answer $EA h1.node.$ZONE A $EA_PID >/dev/null
next_port; EB=$PORT; start_etcd_dir "$WORK/empty-zones" $EB; EB_PID=$SPID; PIDS+=($EB_PID)
wait_answer $EB h1.node.$ZONE A $EB_PID >/dev/null
ETCD_CROSS=$($LOAD_CPU "$BIN/change-latency" $EA_API 127.0.0.1:$EB "$WORK/admin.pem" $ZONE $HOSTS $CHANGES from-ack)
echo "bench: etcd, change acknowledged by one server to the other server's DNS at $HOSTS hosts: $ETCD_CROSS"
ETCD_ONE=$($LOAD_CPU "$BIN/change-latency" $EA_API 127.0.0.1:$EA "$WORK/admin.pem" $ZONE $HOSTS $CHANGES)
echo "bench: etcd, change to answer through one server at $HOSTS hosts: $ETCD_ONE (sled: $CHANGE_SMALL)"
kill $EA_PID $EB_PID "${ETCD_PIDS[@]}" 2>/dev/null || true; wait $EA_PID $EB_PID "${ETCD_PIDS[@]}" 2>/dev/null || true

# ---- HTTP forwarding and the signed hop ------------------------------------------
next_port; NGINX_PORT=$PORT
mkdir -p $WORK/nginx
cat > $WORK/nginx/backend.conf <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/backend.pid;
error_log $WORK/nginx/backend.err;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 200 '{"host":"\$http_x_switchboard_host"}\n'; } }
}
CONF
taskset -c 1 nginx -c $WORK/nginx/backend.conf -p $WORK/nginx >/dev/null 2>&1 &
PIDS+=($!)

wrk_run() { # url [script] -> "rps p50_ms"
  local url=$1 script=${2:-}
  local args=(-t1 -c64 -d${DUR}s --latency)
  [ -n "$script" ] && args+=(-s "$script")
  $LOAD_CPU wrk "${args[@]}" "$url" 2>/dev/null | awk '
    /Requests\/sec/ {rps=$2}
    /^ +50%/ {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; p50=v}
    END {printf "%d %.3f", rps, p50}'
}

wrk_lat() { # url [script] -> "p50_ms p99_ms" over one connection: what a proxy adds, unloaded
  local url=$1 script=${2:-}
  local args=(-t1 -c1 -d$(( (DUR + 1) / 2 ))s --latency)
  [ -n "$script" ] && args+=(-s "$script")
  $LOAD_CPU wrk "${args[@]}" "$url" 2>/dev/null | awk '
    function ms(v) { if (v ~ /us$/) {sub(/us$/,"",v); return v/1000} if (v ~ /ms$/) {sub(/ms$/,"",v); return v} sub(/s$/,"",v); return v*1000 }
    /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)}
    END {printf "%.3f %.3f", p50, p99}'
}

# A directory for the sidecars (not pinned: idle while they run on their caches).
next_port; HDNS=$PORT; next_port; HAPI=$PORT
mkdir -p $WORK/hzones
"$BIN/gen-zone" $ZONE 10 1 "$WORK/hzones" "$ADMIN_PUB"
"$BIN/switchboard-directory" serve --zones "$WORK/hzones" --data "$WORK/hdata" --dns 127.0.0.1:$HDNS --http 127.0.0.1:$HAPI >/dev/null 2>&1 &
PIDS+=($!)
wait_answer $HDNS ns1.$ZONE A >/dev/null
sbd() { "$BIN/switchboard-directory" --server http://127.0.0.1:$HAPI --key "$WORK/admin.pem" "$@" >/dev/null; }
start_sidecar() { # name roles http cluster [backend] [extra run flags] -> SPID
  local pub
  pub=$("$BIN/switchboard-sidecar" keygen --out "$WORK/$1.pem" | awk '/public key/ {print $3}')
  sbd host add $1 --addr 127.0.0.1 --pubkey "$pub" --roles $2
  sbd bind add $1 switchboard $4
  $SERVER_CPU "$BIN/switchboard-sidecar" run --key "$WORK/$1.pem" --directory 127.0.0.1:$HDNS --directory-api http://127.0.0.1:$HAPI \
    --zone $ZONE --http 127.0.0.1:$3 --cluster 127.0.0.1:$4 --repos "$WORK/repos-$1" ${5:+--web-backend $5} ${6:-} >/dev/null 2>"$WORK/$1.log" &
  SPID=$!
  PIDS+=($SPID)
  for _ in $(seq 1 500); do curl -s -o /dev/null "http://127.0.0.1:$4/metrics" && return 0; sleep 0.02; done
  echo "bench: sidecar $1 did not start: $(tail -3 "$WORK/$1.log")" >&2; return 1
}

next_port; SA_HTTP=$PORT; next_port; SA_CLUSTER=$PORT
start_sidecar wa web $SA_HTTP $SA_CLUSTER http://127.0.0.1:$NGINX_PORT
WA_PID=$SPID

next_port; HAP_PORT=$PORT
cat > $WORK/haproxy.cfg <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$HAP_PORT
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:$NGINX_PORT
CONF
$SERVER_CPU haproxy -f $WORK/haproxy.cfg >/dev/null 2>&1 &
HAP_PID=$!
PIDS+=($!)
for _ in $(seq 1 500); do curl -s -o /dev/null http://127.0.0.1:$HAP_PORT/ && break; sleep 0.02; done

next_port; NGP_PORT=$PORT
cat > $WORK/nginx/proxy.conf <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx/proxy.pid;
error_log $WORK/nginx/proxy.err;
events { worker_connections 1024; }
http {
  access_log off;
  upstream b { server 127.0.0.1:$NGINX_PORT; keepalive 64; }
  server { listen 127.0.0.1:$NGP_PORT; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
$SERVER_CPU nginx -c $WORK/nginx/proxy.conf -p $WORK/nginx >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 500); do curl -s -o /dev/null http://127.0.0.1:$NGP_PORT/ && break; sleep 0.02; done

# Signed hop: a Conduit call for a repository on another host: wa -> signed -> wb -> nginx.
next_port; SB_HTTP=$PORT; next_port; SB_CLUSTER=$PORT
start_sidecar wb repo $SB_HTTP $SB_CLUSTER http://127.0.0.1:$NGINX_PORT
WB_PID=$SPID
sbd repo add hop --master wb
cat > $WORK/post.lua <<'LUA'
wrk.method = "POST"
wrk.body = "repository=hop"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA
for _ in $(seq 1 200); do curl -s -o /dev/null -w '%{http_code}' -d repository=hop http://127.0.0.1:$SA_HTTP/api/diffusion.querycommits | grep -q 200 && break; sleep 0.05; done
# The same hop signed the old way, one ed25519 signature per call (--cluster-auth
# ed25519): we -> signed -> wb. wa (the default) signs under a session key.
next_port; SC2_HTTP=$PORT; next_port; SC2_CLUSTER=$PORT
start_sidecar we web $SC2_HTTP $SC2_CLUSTER http://127.0.0.1:$NGINX_PORT "--cluster-auth ed25519"
WE_PID=$SPID
for _ in $(seq 1 200); do curl -s -o /dev/null -w '%{http_code}' -d repository=hop http://127.0.0.1:$SC2_HTTP/api/diffusion.querycommits | grep -q 200 && break; sleep 0.05; done
# What one handshake costs (X25519 both sides, two ed25519 signatures and checks, HKDF),
# and a session signature against an ed25519 one, in-process on the server CPU.
read HS_US HMAC_US ED_US <<<"$($SERVER_CPU "$BIN/session-handshake" $([ $QUICK = 1 ] && echo 200 || echo 5000))"
echo "bench: session handshake $HS_US us; call signed+verified: hmac-sha256 $HMAC_US us, ed25519 $ED_US us"

# The same hop with --cluster-tls on both sidecars: ta -> TLS 1.3 (signed inside) -> tb -> nginx.
next_port; TA_HTTP=$PORT; next_port; TA_CLUSTER=$PORT; next_port; TB_HTTP=$PORT; next_port; TB_CLUSTER=$PORT
start_sidecar ta web $TA_HTTP $TA_CLUSTER http://127.0.0.1:$NGINX_PORT --cluster-tls
TA_PID=$SPID
start_sidecar tb repo $TB_HTTP $TB_CLUSTER http://127.0.0.1:$NGINX_PORT --cluster-tls
TB_PID=$SPID
sbd repo add tlshop --master tb
sed 's/repository=hop/repository=tlshop/' $WORK/post.lua > $WORK/post-tls.lua
for _ in $(seq 1 200); do curl -s -o /dev/null -w '%{http_code}' -d repository=tlshop http://127.0.0.1:$TA_HTTP/api/diffusion.querycommits | grep -q 200 && break; sleep 0.05; done
# tb's cluster listener refuses plain HTTP: the hop is encrypted.
[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$TB_CLUSTER/ || true)" = 421 ] || echo "bench: warning: tb's cluster listener answered plain HTTP" >&2

# The peer of the signed hop: HAProxy A -> mutual TLS (keep-alive) -> HAProxy B -> nginx,
# two processes on CPU 0, with a throwaway CA, server and client certificate.
mkdir -p $WORK/tls
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout $WORK/tls/ca.key -out $WORK/tls/ca.pem 2>/dev/null
for n in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout $WORK/tls/$n.key -out $WORK/tls/$n.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' > $WORK/tls/$n.ext
  openssl x509 -req -in $WORK/tls/$n.csr -CA $WORK/tls/ca.pem -CAkey $WORK/tls/ca.key -CAcreateserial \
    -days 2 -extfile $WORK/tls/$n.ext -out $WORK/tls/$n.crt 2>/dev/null
  cat $WORK/tls/$n.crt $WORK/tls/$n.key > $WORK/tls/$n.pem
done
next_port; MA_PORT=$PORT; next_port; MB_PORT=$PORT
HAP_DEFAULTS="global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive"
cat > $WORK/mtls-a.cfg <<CONF
$HAP_DEFAULTS
frontend a
  bind 127.0.0.1:$MA_PORT
  default_backend to_b
backend to_b
  http-reuse always
  server b 127.0.0.1:$MB_PORT ssl crt $WORK/tls/client.pem ca-file $WORK/tls/ca.pem verify required
CONF
cat > $WORK/mtls-b.cfg <<CONF
$HAP_DEFAULTS
frontend b
  bind 127.0.0.1:$MB_PORT ssl crt $WORK/tls/server.pem ca-file $WORK/tls/ca.pem verify required
  default_backend to_nginx
backend to_nginx
  http-reuse always
  server n 127.0.0.1:$NGINX_PORT
CONF
declare -A MTLS_PID
for c in b a; do $SERVER_CPU haproxy -f $WORK/mtls-$c.cfg >/dev/null 2>&1 & PIDS+=($!); MTLS_PID[$c]=$!; done
for _ in $(seq 1 500); do curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$MA_PORT/ | grep -q 200 && break; sleep 0.02; done
# B refuses a caller without the client certificate.
[ "$(curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:$MB_PORT/ || true)" = 000 ] || echo "bench: warning: HAProxy B accepted a call without a client certificate" >&2

# Every path, back to back in each round.
declare -A H_RPS H_P50 L_P50 L_P99
HTTP_PATHS="direct sidecar haproxy nginx hop hop_ed25519 tlshop mtls"
http_url() { # path -> "url [script]"
  case $1 in
    direct) echo "http://127.0.0.1:$NGINX_PORT/" ;;
    sidecar) echo "http://127.0.0.1:$SA_HTTP/" ;;
    haproxy) echo "http://127.0.0.1:$HAP_PORT/" ;;
    nginx) echo "http://127.0.0.1:$NGP_PORT/" ;;
    hop) echo "http://127.0.0.1:$SA_HTTP/api/diffusion.querycommits $WORK/post.lua" ;;
    tlshop) echo "http://127.0.0.1:$TA_HTTP/api/diffusion.querycommits $WORK/post-tls.lua" ;;
    hop_ed25519) echo "http://127.0.0.1:$SC2_HTTP/api/diffusion.querycommits $WORK/post.lua" ;;
    mtls) echo "http://127.0.0.1:$MA_PORT/api/diffusion.querycommits $WORK/post.lua" ;;
  esac
}
# CPU time the hypervisor gave to others (steal) while a path ran: on a shared
# machine a round with much of it is not a fair one for that path.
steal_now() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
steal_pct() { echo "$1 $2" | awk '{printf "%.1f", ($4>$2) ? ($3-$1)*100/($4-$2) : 0}'; }
# CPU time (user + system) the path's proxies spent per request: with every
# proxy on CPU 0 it is what bounds a path's throughput, and steal does not
# count in it, so it compares paths fairly on a noisy machine too.
path_pids() {
  case $1 in
    sidecar) echo $WA_PID ;;
    haproxy) echo $HAP_PID ;;
    hop) echo $WA_PID $WB_PID ;;
    hop_ed25519) echo $WE_PID $WB_PID ;;
    tlshop) echo $TA_PID $TB_PID ;;
    mtls) echo ${MTLS_PID[a]} ${MTLS_PID[b]} ;;
  esac
}
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
CLK_TCK=$(getconf CLK_TCK)
declare -A H_STEAL H_CPU
for r in $(seq 1 $ROUNDS); do
  for t in $HTTP_PATHS; do
    pids=$(path_pids $t)
    s0=$(steal_now); c0=$(cpu_ticks $pids)
    read rps p50 <<<"$(wrk_run $(http_url $t))"
    st=$(steal_pct "$s0" "$(steal_now)")
    cpu=-
    [ -n "$pids" ] && cpu=$(echo "$c0 $(cpu_ticks $pids) $rps" | awk -v d=$DUR -v hz=$CLK_TCK '$3>0 {printf "%.1f", ($2-$1)*1e6/hz/($3*d)}')
    H_RPS[$t]+="$rps "; H_P50[$t]+="$p50 "; H_STEAL[$t]+="$st "; H_CPU[$t]+="$cpu "
    echo "bench: round $r http $t $rps r/s p50 $p50 ms (steal $st%, proxies' CPU $cpu us/request)"
  done
  # The same paths over one connection: the latency each adds when nothing queues.
  for t in $HTTP_PATHS; do
    read p50 p99 <<<"$(wrk_lat $(http_url $t))"
    L_P50[$t]+="$p50 "; L_P99[$t]+="$p99 "
    echo "bench: round $r http one connection $t p50 $p50 ms p99 $p99 ms"
  done
done
hmed() { echo ${1} | tr ' ' '\n' | grep . | median; }
hspread() { echo ${1} | tr ' ' '\n' | grep . | spread; }
DIRECT_RPS=$(hmed "${H_RPS[direct]}"); DIRECT_P50=$(hmed "${H_P50[direct]}")
SC_RPS=$(hmed "${H_RPS[sidecar]}"); SC_P50=$(hmed "${H_P50[sidecar]}")
HAP_RPS=$(hmed "${H_RPS[haproxy]}"); HAP_P50=$(hmed "${H_P50[haproxy]}")
NGP_RPS=$(hmed "${H_RPS[nginx]}"); NGP_P50=$(hmed "${H_P50[nginx]}")
HOP_RPS=$(hmed "${H_RPS[hop]}"); HOP_P50=$(hmed "${H_P50[hop]}")
MTLS_RPS=$(hmed "${H_RPS[mtls]}"); MTLS_P50=$(hmed "${H_P50[mtls]}")
TLSHOP_RPS=$(hmed "${H_RPS[tlshop]}"); TLSHOP_P50=$(hmed "${H_P50[tlshop]}")
HOPE_RPS=$(hmed "${H_RPS[hop_ed25519]}"); HOPE_P50=$(hmed "${H_P50[hop_ed25519]}")
echo "bench: http direct $DIRECT_RPS r/s p50 $DIRECT_P50 ms; sidecar $SC_RPS / $SC_P50; haproxy $HAP_RPS / $HAP_P50; nginx $NGP_RPS / $NGP_P50"
# Each round's ratio to the pair measured right after it, then their median:
# steadier than a ratio of medians when the machine's load moves between rounds.
ratio_med() { paste -d' ' <(echo ${H_RPS[$1]} | tr ' ' '\n') <(echo ${H_RPS[mtls]} | tr ' ' '\n') | awk '$2>0 {printf "%.2f\n", $1/$2}' | median; }
HOP_X=$(ratio_med hop); TLSHOP_X=$(ratio_med tlshop); HOPE_X=$(ratio_med hop_ed25519)
echo "bench: signed hop (session) $HOP_RPS r/s p50 $HOP_P50 ms; (ed25519) $HOPE_RPS / $HOPE_P50; (session, --cluster-tls) $TLSHOP_RPS / $TLSHOP_P50; haproxy mtls $MTLS_RPS / $MTLS_P50"
echo "bench: signed hop / the pair, median of rounds: session ${HOP_X}x, --cluster-tls ${TLSHOP_X}x, ed25519 ${HOPE_X}x"

# Failover: promote back and forth, time until the web host's sidecar sends writes to the new master.
next_port; SC_HTTP=$PORT; next_port; SC_CLUSTER=$PORT
start_sidecar wc repo $SC_HTTP $SC_CLUSTER http://127.0.0.1:$NGINX_PORT
sbd repo add fo --master wb --replicas wc
FAILOVER=$("$BIN/failover-latency" 127.0.0.1:$HAPI "$WORK/admin.pem" $ZONE fo wb wc 127.0.0.1:$SA_HTTP -- $CHANGES)
echo "bench: failover $FAILOVER"

# git over SSH: clone a generated repository through ssh-exec (wb holds it: local;
# wa does not: tunnelled to wb) and directly over the same kind of sshd.
mkdir -p "$WORK/big" /run/sshd
git -C "$WORK/big" init -q
for i in $(seq 1 $((REPO_MB / 4))); do head -c 4194304 /dev/urandom > "$WORK/big/blob$i"; done
git -C "$WORK/big" add . && git -C "$WORK/big" -c user.name=b -c user.email=b@b commit -q -m big
git clone -q --bare "$WORK/big" "$WORK/repos-wb/big.git"
sbd repo add big --master wb
ssh-keygen -q -t ed25519 -N "" -f "$WORK/client_key"
start_sshd() { # name port [force-command]
  local d=$WORK/sshd-$1; mkdir -p $d
  ssh-keygen -q -t ed25519 -N "" -f $d/host_key
  cp "$WORK/client_key.pub" $d/authorized_keys
  {
    echo "Port $2"; echo "ListenAddress 127.0.0.1"; echo "HostKey $d/host_key"; echo "PidFile $d/pid"
    echo "AuthorizedKeysFile $d/authorized_keys"; echo "StrictModes no"; echo "UsePAM no"
    echo "PasswordAuthentication no"; echo "PermitRootLogin prohibit-password"; echo "LogLevel ERROR"
    [ -n "${3:-}" ] && echo "ForceCommand $3"
  } > $d/sshd_config
  /usr/sbin/sshd -D -e -f $d/sshd_config >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && return 0; sleep 0.05; done
}
exec_cmd() { echo "$BIN/switchboard-sidecar ssh-exec --key $WORK/$1.pem --directory 127.0.0.1:$HDNS --directory-api http://127.0.0.1:$HAPI --zone $ZONE --repos $WORK/repos-$1"; }
next_port; SSH_DIRECT=$PORT; start_sshd direct $SSH_DIRECT
next_port; SSH_LOCAL=$PORT; start_sshd local $SSH_LOCAL "$(exec_cmd wb)"
next_port; SSH_TUNNEL=$PORT; start_sshd tunnel $SSH_TUNNEL "$(exec_cmd wa)"
export GIT_SSH_COMMAND="ssh -i $WORK/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"
clone_time() { # url -> seconds
  local dir=$WORK/clone-$RANDOM start end
  start=$(date +%s.%N)
  $LOAD_CPU git clone -q --bare "$1" "$dir"
  end=$(date +%s.%N)
  rm -rf "$dir"
  awk -v a="$start" -v b="$end" 'BEGIN {printf "%.3f\n", b - a}'
}
declare -A CLONE
for round in $(seq 1 $ROUNDS); do
  CLONE[direct]="${CLONE[direct]:-} $(clone_time ssh://127.0.0.1:$SSH_DIRECT$WORK/repos-wb/big.git)"
  CLONE[local]="${CLONE[local]:-} $(clone_time ssh://127.0.0.1:$SSH_LOCAL/big)"
  CLONE[tunnel]="${CLONE[tunnel]:-} $(clone_time ssh://127.0.0.1:$SSH_TUNNEL/big)"
done
unset GIT_SSH_COMMAND
declare -A CLONE_MED
for k in direct local tunnel; do CLONE_MED[$k]=$(echo ${CLONE[$k]} | tr ' ' '\n' | median); done
echo "bench: git clone of $REPO_MB MB over SSH: direct ${CLONE_MED[direct]} s, ssh-exec local ${CLONE_MED[local]} s, tunnelled ${CLONE_MED[tunnel]} s"

# ---- results -------------------------------------------------------------------
mkdir -p benches/results
json_list() { echo "[$(echo $1 | tr ' ' ',')]"; }
{
  echo "{"
  echo "  \"machine\": \"$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)\","
  echo "  \"quick\": $([ $QUICK = 1 ] && echo true || echo false), \"seconds\": $DUR, \"rounds\": $ROUNDS,"
  echo "  \"dns_qps\": {"
  first=1; for s in $SERVERS; do [ $first = 1 ] || echo ","; first=0; printf "    \"%s\": %s" $s "$(json_list "${QPS[$s]}")"; done; echo
  echo "  },"
  echo "  \"dns_server_cpu_busy_pct\": {$(for s in $SERVERS; do printf '"%s": %s, ' $s "$(json_list "${BUSY[$s]}")"; done | sed 's/, $//')},"
  echo "  \"dns_dnsperf_cpu_busy_pct\": {$(for s in $SERVERS; do printf '"%s": %s, ' $s "$(json_list "${LOADBUSY[$s]}")"; done | sed 's/, $//')},"
  echo "  \"p99_ms_at_half_bind\": {\"rate\": $HALF, $(for s in $SERVERS; do printf '"%s": %s, ' $s ${P99[$s]}; done | sed 's/, $//')},"
  echo "  \"scale\": {\"hosts\": $SCALE_HOSTS, $(for s in $SCALE_RUNS; do printf '"%s": {"rss_mb": %s, "first_answer_s": %s}, ' $s ${RSS[$s]} ${START[$s]}; done | sed 's/, $//')},"
  echo "  \"change_to_answer\": {\"hosts_$HOSTS\": $CHANGE_SMALL, \"hosts_$SCALE_HOSTS\": $CHANGE_SCALE},"
  echo "  \"axfr_$SCALE_HOSTS\": {\"knot\": ${AXFR[knot]}, \"bind\": ${AXFR[bind]}, \"switchboard\": ${AXFR[switchboard]}},"
  echo "  \"ixfr_change_to_knot_answer\": {\"hosts_$HOSTS\": $IXFR_SMALL, \"hosts_$SCALE_HOSTS\": $IXFR_SCALE},"
  echo "  \"etcd\": {\"hosts\": $HOSTS, \"acked_to_other_server_dns\": $ETCD_CROSS, \"one_server\": $ETCD_ONE, \"one_server_sled\": $CHANGE_SMALL},"
  echo "  \"http\": {$(for t in $HTTP_PATHS; do printf '"%s": {"rps": %s, "p50_ms": %s, "steal_pct": %s, "proxies_cpu_us_per_request": %s}, ' $t "$(json_list "${H_RPS[$t]}")" "$(json_list "${H_P50[$t]}")" "$(json_list "${H_STEAL[$t]}")" "$(json_list "$(echo ${H_CPU[$t]} | sed 's/-/null/g')")"; done | sed 's/, $//')},"
  echo "  \"http_one_connection\": {$(for t in $HTTP_PATHS; do printf '"%s": {"p50_ms": %s, "p99_ms": %s}, ' $t "$(json_list "${L_P50[$t]}")" "$(json_list "${L_P99[$t]}")"; done | sed 's/, $//')},"
  echo "  \"session\": {\"handshake_us\": $HS_US, \"hmac_sign_verify_us\": $HMAC_US, \"ed25519_sign_verify_us\": $ED_US},"
  echo "  \"failover\": $FAILOVER,"
  echo "  \"git_clone_s\": {\"mb\": $REPO_MB, \"direct\": ${CLONE_MED[direct]}, \"local\": ${CLONE_MED[local]}, \"tunnelled\": ${CLONE_MED[tunnel]}}"
  echo "}"
} > benches/results/latest.json
echo "bench: results in benches/results/latest.json"

if [ $QUICK = 0 ]; then
  cp benches/results/latest.json "benches/results/$(date +%Y%m%d-%H%M%S).json"
  med() { echo $1 | tr ' ' '\n' | median; }
  spr() { echo $1 | tr ' ' '\n' | spread; }
  NSD_MED=$(med "${QPS[nsd]}")
  {
    echo "# Benchmarks"
    echo
    echo "Measured by \`benches/run.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)."
    echo "Servers pinned to CPU 0, load generators to CPU 1; $ROUNDS rounds of $DUR s, peers and Switchboard back to back in each round."
    echo "Raw figures: \`benches/results/\`."
    echo
    echo "## DNS queries per second, one core"
    echo
    echo "dnsperf, 20 clients, 200 outstanding; $HOSTS hosts, $SERVICES services x 3 bindings; mix 40% A, 30% SRV, 20% TXT, 10% NXDOMAIN."
    echo
    echo "| server | median q/s | spread | vs NSD | server CPU busy % | dnsperf CPU busy % | q/s per busy server CPU | vs NSD |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    NSD_PER=$(awk -v a="$NSD_MED" -v b="$(med "${BUSY[nsd]}")" 'BEGIN {printf "%d", (b > 0) ? a * 100 / b : 0}')
    for s in $SERVERS; do
      m=$(med "${QPS[$s]}"); b=$(med "${BUSY[$s]}")
      per=$(awk -v a="$m" -v b="$b" 'BEGIN {printf "%d", (b > 0) ? a * 100 / b : 0}')
      echo "| $s | $m | $(spr "${QPS[$s]}") | $(awk -v a="$m" -v b="$NSD_MED" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}') | $b | $(med "${LOADBUSY[$s]}") | $per | $(awk -v a="$per" -v b="$NSD_PER" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}') |"
    done
    echo
    echo "## DNS latency at half of BIND's peak ($HALF q/s)"
    echo
    echo "| server | p99 ms |"
    echo "| --- | --- |"
    for s in $SERVERS; do echo "| $s | ${P99[$s]} |"; done
    echo
    echo "## Scale: $SCALE_HOSTS hosts, $SCALE_SERVICES services"
    echo
    echo "| server | RSS MB (median) | start to first answer, s (median) | spread, s |"
    echo "| --- | --- | --- | --- |"
    for s in $SCALE_RUNS; do echo "| $s | ${RSS[$s]} | ${START[$s]} | $(spr "${START_ALL[$s]}") |"; done
    echo
    echo "(switchboard: seeded from the zone file into an empty store; switchboard-store: restarted on that store after a clean stop, which saved the compiled view; switchboard-rebuild: restarted after a change and kill -9, so the view is built from the model.)"
    echo
    echo "## Change to answer"
    echo
    echo "One signed change through the admin API, then the first DNS answer that shows it ($CHANGES changes)."
    echo
    echo "| hosts | result |"
    echo "| --- | --- |"
    echo "| $HOSTS | \`$CHANGE_SMALL\` |"
    echo "| $SCALE_HOSTS | \`$CHANGE_SCALE\` |"
    echo
    echo "## Zone transfers"
    echo
    echo "AXFR of the $SCALE_HOSTS-host zone over TCP, signed with TSIG (hmac-sha256), median of $ROUNDS; the client reads every message to the closing SOA. Knot and BIND serve the flat export of the same zone (which leaves out the A/AAAA records at \`_SVC._tcp\` names BIND refuses in a primary zone)."
    echo
    echo "| primary | result |"
    echo "| --- | --- |"
    for s in knot bind switchboard; do echo "| $s | \`${AXFR[$s]}\` |"; done
    echo
    echo "IXFR of one change: signed change acknowledged by Switchboard -> a Knot secondary (NOTIFY, SOA query, IXFR, Knot applies it) answers it, $CHANGES changes:"
    echo
    echo "| hosts | result |"
    echo "| --- | --- |"
    echo "| $HOSTS | \`$IXFR_SMALL\` |"
    echo "| $SCALE_HOSTS | \`$IXFR_SCALE\` |"
    echo
    echo "## Shared store on etcd"
    echo
    echo "Two directory servers on a three-member etcd cluster ($HOSTS hosts, $CHANGES changes, one client): a change acknowledged by one, then the first answer from the other's DNS that shows it (targets p50 < 20 ms, p99 < 100 ms); and changes through one server on etcd beside the same on sled (\`per_s\`: changes one client made per second)."
    echo
    echo "| what | result |"
    echo "| --- | --- |"
    echo "| etcd: acknowledged by A, answered by B | \`$ETCD_CROSS\` |"
    echo "| etcd: change to answer, one server | \`$ETCD_ONE\` |"
    echo "| sled: change to answer, one server | \`$CHANGE_SMALL\` |"
    echo
    echo "## HTTP forwarding, one core"
    echo
    echo "wrk -t1 -c64 to a local nginx that answers 200 (requests/s, p50 ms); the proxy pinned to CPU 0."
    echo
    echo "| path | requests/s (median) | spread | p50 ms |"
    echo "| --- | --- | --- | --- |"
    echo "| direct to nginx | $DIRECT_RPS | $(hspread "${H_RPS[direct]}") | $DIRECT_P50 |"
    echo "| through the sidecar | $SC_RPS | $(hspread "${H_RPS[sidecar]}") | $SC_P50 |"
    echo "| through HAProxy | $HAP_RPS | $(hspread "${H_RPS[haproxy]}") | $HAP_P50 |"
    echo "| through nginx | $NGP_RPS | $(hspread "${H_RPS[nginx]}") | $NGP_P50 |"
    echo
    echo "## Signed hop"
    echo
    echo "wrk POST of a Conduit call for a repository on the other host, both proxies on CPU 0:"
    echo
    echo "| path | requests/s (median) | spread | p50 ms | x the pair (median of rounds) | steal % (per round) | both proxies' CPU µs per request (per round) |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    echo "| client -> sidecar A -> session-signed -> sidecar B -> nginx | $HOP_RPS | $(hspread "${H_RPS[hop]}") | $HOP_P50 | $HOP_X | ${H_STEAL[hop]} | ${H_CPU[hop]} |"
    echo "| same, \`--cluster-auth ed25519\` | $HOPE_RPS | $(hspread "${H_RPS[hop_ed25519]}") | $HOPE_P50 | $HOPE_X | ${H_STEAL[hop_ed25519]} | ${H_CPU[hop_ed25519]} |"
    echo "| same, session-signed in TLS 1.3 (\`--cluster-tls\`) | $TLSHOP_RPS | $(hspread "${H_RPS[tlshop]}") | $TLSHOP_P50 | $TLSHOP_X | ${H_STEAL[tlshop]} | ${H_CPU[tlshop]} |"
    echo "| client -> HAProxy A -> mutual TLS -> HAProxy B -> nginx | $MTLS_RPS | $(hspread "${H_RPS[mtls]}") | $MTLS_P50 | 1 | ${H_STEAL[mtls]} | ${H_CPU[mtls]} |"
    echo
    echo "One session handshake: $HS_US µs of CPU (both sides, in-process); a call signed and verified: hmac-sha256 $HMAC_US µs, ed25519 $ED_US µs."
    echo
    echo "## Latency over one connection"
    echo
    echo "wrk -t1 -c1, each path above: nothing queues, so this is what each proxy adds."
    echo
    echo "| path | p50 ms (median) | p99 ms (median) |"
    echo "| --- | --- | --- |"
    for t in $HTTP_PATHS; do echo "| $t | $(hmed "${L_P50[$t]}") | $(hmed "${L_P99[$t]}") |"; done
    echo
    echo "## Failover"
    echo
    echo "\`repo promote\` back and forth between two up-to-date hosts, then the time until the web host's sidecar sends a Conduit write to the new master: \`$FAILOVER\`."
    echo
    echo "## git over SSH"
    echo
    echo "\`git clone --bare\` of a $REPO_MB MB generated repository (median of $ROUNDS):"
    echo
    echo "| path | seconds |"
    echo "| --- | --- |"
    echo "| plain sshd, no Switchboard | ${CLONE_MED[direct]} |"
    echo "| ssh-exec, repository on this host | ${CLONE_MED[local]} |"
    echo "| ssh-exec, tunnelled to the repository's host | ${CLONE_MED[tunnel]} |"
  } > docs/benchmarks.md.new
  echo "bench: wrote docs/benchmarks.md.new (merge the analysis by hand)"
fi

# Clones right after a push (issue 19): N clones through the replicas at once,
# with sync-before-read on and off; the release build, the test harness's cluster.
if [ $QUICK = 1 ]; then STORM="10 1"; else STORM="50 5"; fi
SWITCHBOARD_BIN_DIR=$PWD/target/release ./target/release/clone-storm $STORM | tee benches/results/clone-storm-latest.txt

# The database ports against direct connections and HAProxy, on real MariaDB.
./benches/databases.sh $([ $QUICK = 1 ] && echo --quick)
