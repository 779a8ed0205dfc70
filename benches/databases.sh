#!/usr/bin/env bash
# The sidecar's database ports (issue 18) against direct connections and HAProxy,
# on real MariaDB: a primary and two replicas with GTID replication.
#
#   benches/databases.sh            full run: 6 rounds of 15 s per path
#   benches/databases.sh --quick    a few seconds, one round: keeps the script from rotting (CI)
#
# Installs what it needs from Debian (idempotently), builds release binaries, pins
# the database servers, the directory and the sidecars of the database hosts to
# CPU 0 and the load generators (sysbench, db-connect) to CPU 1, and writes
# benches/results/databases-latest.json (full runs: a dated copy too, and the tables in
# benches/results/databases-latest.md to merge into docs/benchmarks.md by hand).
#
# The proxies (the web hosts' sidecars, HAProxy) run twice: on CPU 0 with the
# servers, then moved to CPU 1 with the load generator, where the sidecar runs in
# production (on the application's host).
#
# Paths (sysbench 1.0, the same threads, tables and size for all; each round
# starts at another path):
#   oltp_write_only: direct to db1 | HAProxy (tcp) -> db1 | the sidecar's write port
#   oltp_read_only:  direct, sysbench's own round robin over db2,db3 | HAProxy
#                    (tcp, roundrobin db2,db3) | the sidecar's read port (causal on)
# Then new connections (open + SELECT + close, db-connect): direct to db2 | HAProxy
# read | the read port with causal reads on | a read port with --db-causal off.
#
# KEEP_WORK=1 keeps the work directory (logs, data) after the run; SIDECAR_LOG sets
# the sidecars' SWITCHBOARD_LOG filter (e.g. info,switchboard_sidecar::db=debug).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ $QUICK = 1 ]; then
  DUR=3; ROUNDS=1; TABLES=2; TABLE_SIZE=10000; CONN_DUR=2; CONN_ROUNDS=1
else
  # Six rounds, so each path runs first, second and third twice (sysbench), and
  # a few runs the hypervisor slows (steal, recorded) do not move the medians.
  DUR=15; ROUNDS=6; TABLES=4; TABLE_SIZE=100000; CONN_DUR=8; CONN_ROUNDS=4
fi
THREADS=8          # sysbench threads (= connections) on every path
CONN_LOOPS=8       # db-connect's concurrent open/query/close loops
ZONE=cluster.example.
DB=main

need=()
for p in mariadbd:mariadb-server mariadb-install-db:mariadb-server mariadb:mariadb-client sysbench:sysbench haproxy:haproxy dig:dnsutils taskset:util-linux ss:iproute2; do
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
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

SERVER_CPU="taskset -c 0"; LOAD_CPU="taskset -c 1"
[ "$(nproc)" -ge 2 ] || { SERVER_CPU=""; LOAD_CPU=""; }

die() { # message [log files...]: prints the message and the end of each log, exits
  echo "bench: $1" >&2; shift
  for f in "$@"; do echo "--- $f" >&2; tail -20 "$f" >&2 2>/dev/null || true; done
  exit 1
}

# Below the kernel's ephemeral range (32768+), so no client socket holds our ports;
# a port something already listens on (on any of our addresses) is skipped.
PORT=$((20000 + RANDOM % 10000))
next_port() {
  while :; do
    PORT=$((PORT + 1))
    [ -z "$(ss -Htln "sport = :$PORT" 2>/dev/null)" ] && return 0
  done
}

# ---- the directory -------------------------------------------------------------
mkdir -p "$WORK/zones"
ADMIN_PUB=$("$BIN/switchboard-directory" --json keygen --out "$WORK/admin.pem" | sed 's/.*"public_key":"\([^"]*\)".*/\1/')
cat > "$WORK/zones/$ZONE"zone <<ZF
\$ORIGIN $ZONE
\$TTL 3600
@ IN SOA ns1 hostmaster ( 1 3600 600 604800 30 )
  IN NS ns1
ns1 IN A 127.0.0.1
admin._admin 60 IN TXT "key=ed25519:$ADMIN_PUB"
ZF
next_port; DNS=$PORT; next_port; API=$PORT
$SERVER_CPU "$BIN/switchboard-directory" serve --zones "$WORK/zones" --data "$WORK/dir-data" \
  --dns 127.0.0.1:$DNS --http 127.0.0.1:$API >"$WORK/directory.log" 2>&1 &
DIR_PID=$!; PIDS+=($DIR_PID)
for _ in $(seq 1 500); do
  kill -0 $DIR_PID 2>/dev/null || die "the directory exited" "$WORK/directory.log"
  dig @127.0.0.1 -p $DNS +norec +time=1 +tries=1 +short ns1.$ZONE A 2>/dev/null | grep -q '^127' && break
  sleep 0.02
done
sbd() { "$BIN/switchboard-directory" --server http://127.0.0.1:$API --key "$WORK/admin.pem" "$@" >/dev/null; }
host_key() { # name -> public key; writes $WORK/NAME.pem
  "$BIN/switchboard-sidecar" keygen --out "$WORK/$1.pem" | awk '/public key/ {print $3}'
}
declare -A IP=([db1]=127.0.0.11 [db2]=127.0.0.12 [db3]=127.0.0.13 [web1]=127.0.0.1 [web2]=127.0.0.1)
for h in db1 db2 db3 web1 web2; do
  role=db; case $h in web*) role=web ;; esac
  sbd host add $h --addr ${IP[$h]} --pubkey "$(host_key $h)" --roles $role
done

# ---- MariaDB: a primary and two replicas on the same port, one address each -----
# Tuned the same for every path (it is the proxy that is measured, not the disks):
# 256 MB buffer pool, the redo log flushed once a second, the binary log never synced.
next_port
while [ -n "$(ss -Htln "sport = :$PORT" 2>/dev/null)" ]; do next_port; done
P=$PORT
PASS=bench-$RANDOM$RANDOM
printf '%s\n' "$PASS" > "$WORK/db-password"
for i in 1 2 3; do
  d=$WORK/db$i; mkdir -p $d
  mariadb-install-db --no-defaults --user=root --datadir=$d/data --auth-root-authentication-method=normal \
    --skip-test-db >$d/install.log 2>&1 || die "mariadb-install-db failed for db$i" $d/install.log
  ro=""; [ $i = 1 ] || ro="--read-only=ON"
  $SERVER_CPU mariadbd --no-defaults --user=root --datadir=$d/data --bind-address=127.0.0.1$i --port=$P \
    --socket=$d/sock --pid-file=$d/pid --log-error=$d/error.log --server-id=$i \
    --log-bin=$d/data/binlog --binlog-format=ROW --log-slave-updates=ON --gtid-strict-mode=ON $ro \
    --skip-name-resolve --max-connections=2000 --thread-cache-size=200 \
    --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --sync-binlog=0 \
    --performance-schema=OFF >/dev/null 2>&1 &
  PIDS+=($!); MPID[$i]=$!
done
sql() { # server-number statements...: as root on the server's socket
  local i=$1; shift
  mariadb --no-defaults -S "$WORK/db$i/sock" -uroot -N -B -e "$*"
}
for i in 1 2 3; do
  for _ in $(seq 1 600); do
    kill -0 ${MPID[$i]} 2>/dev/null || die "mariadbd db$i exited" "$WORK/db$i/error.log"
    sql $i "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.05
  done
  sql $i "SELECT 1" >/dev/null || die "mariadbd db$i does not answer" "$WORK/db$i/error.log"
done
# Written on the primary and replicated: the replicas start from its first binlog.
sql 1 "CREATE USER 'repl'@'%' IDENTIFIED BY '$PASS'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
  CREATE USER 'sbtest'@'%' IDENTIFIED BY '$PASS'; CREATE DATABASE sbtest; GRANT ALL ON sbtest.* TO 'sbtest'@'%';
  CREATE USER 'switchboard'@'%' IDENTIFIED BY '$PASS';
  GRANT BINLOG MONITOR, SLAVE MONITOR, REPLICATION SLAVE ADMIN, READ_ONLY ADMIN, CONNECTION ADMIN, PROCESS ON *.* TO 'switchboard'@'%';"
for i in 2 3; do
  sql $i "CHANGE MASTER TO MASTER_HOST='127.0.0.11', MASTER_PORT=$P, MASTER_USER='repl', MASTER_PASSWORD='$PASS',
    MASTER_USE_GTID=slave_pos; START SLAVE;"
done
sync_replicas() { # waits until both replicas have applied all the primary has
  local pos i r
  pos=$(sql 1 "SELECT @@gtid_binlog_pos")
  for i in 2 3; do
    r=$(sql $i "SELECT MASTER_GTID_WAIT('$pos', 600)")
    [ "$r" = 0 ] || die "db$i did not reach $pos: $(sql $i 'SHOW SLAVE STATUS\G' | grep -E 'Running|Error' | tr -s ' ' | tr '\n' ';')" "$WORK/db$i/error.log"
  done
}
sync_replicas
sbd db add $DB --master db1 --replicas db2,db3 --port $P

# ---- sidecars: one per database host, two web hosts ---------------------------------
# web1: the write and read ports (causal reads on, the default); web2: a read port
# with --db-causal off, for the cost of the causal check.
next_port; W=$PORT; next_port; R=$PORT; next_port; R_OFF=$PORT
start_sidecar() { # name extra-flags...
  local h=$1; shift
  SWITCHBOARD_LOG=${SIDECAR_LOG:-info} $SERVER_CPU "$BIN/switchboard-sidecar" run --key "$WORK/$h.pem" \
    --directory 127.0.0.1:$DNS --directory-api http://127.0.0.1:$API --zone $ZONE \
    --repos "$WORK/repos-$h" --http 127.0.0.1:0 --cluster 127.0.0.1:0 \
    --db-user switchboard --db-password-file "$WORK/db-password" "$@" \
    >"$WORK/sidecar-$h.out" 2>"$WORK/sidecar-$h.log" &
  PIDS+=($!); SC_PID[$h]=$!
}
declare -A SC_PID
for h in db1 db2 db3; do start_sidecar $h --db-local $DB; done
start_sidecar web1 --db $DB=write@127.0.0.1:$W --db $DB=read@127.0.0.1:$R
start_sidecar web2 --db $DB=read@127.0.0.1:$R_OFF --db-causal off
for h in db1 db2 db3 web1 web2; do
  for _ in $(seq 1 500); do
    grep -q listening "$WORK/sidecar-$h.out" 2>/dev/null && break
    kill -0 ${SC_PID[$h]} 2>/dev/null || die "sidecar $h exited" "$WORK/sidecar-$h.log"
    sleep 0.02
  done
  grep -q listening "$WORK/sidecar-$h.out" || die "sidecar $h did not start" "$WORK/sidecar-$h.log"
done
grep -q "db=$DB:write@127.0.0.1:$W" "$WORK/sidecar-web1.out" || die "web1's listening line has no write port: $(cat "$WORK/sidecar-web1.out")"
grep -q "db=$DB:read@127.0.0.1:$R" "$WORK/sidecar-web1.out" || die "web1's listening line has no read port: $(cat "$WORK/sidecar-web1.out")"

# ---- HAProxy in TCP mode in front of the same servers -------------------------------
next_port; HW=$PORT; next_port; HR=$PORT
cat > "$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend write
  bind 127.0.0.1:$HW
  default_backend primary
backend primary
  server db1 127.0.0.11:$P
frontend read
  bind 127.0.0.1:$HR
  default_backend replicas
backend replicas
  balance roundrobin
  server db2 127.0.0.12:$P
  server db3 127.0.0.13:$P
CONF
$SERVER_CPU haproxy -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!); HAP_PID=$!

# Every path answers, and from the server it should (by server_id: db1=1, db2=2, db3=3).
server_id() { # port -> server_id answered through 127.0.0.1:port
  mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P $1 -usbtest -p"$PASS" --connect-timeout=2 -N -B -e "SELECT @@server_id" 2>>"$WORK/client.log"
}
expect_server() { # port what allowed-ids
  local id=""
  for _ in $(seq 1 250); do
    id=$(server_id $1 || true)
    case " $3 " in *" $id "*) [ -n "$id" ] && return 0 ;; esac
    sleep 0.02
  done
  die "$2 (127.0.0.1:$1) answers from server_id '${id}', wanted one of: $3" "$WORK/client.log" "$WORK/sidecar-web1.log" "$WORK/sidecar-web2.log"
}
expect_server $W "the write port" 1
kill -0 $HAP_PID 2>/dev/null || die "haproxy exited" "$WORK/haproxy.log"
expect_server $HW "HAProxy's write frontend" 1
# The read ports take replicas once their first poll has seen them replicate.
expect_server $R "the read port" "2 3"
expect_server $R_OFF "the read port (causal off)" "2 3"
expect_server $HR "HAProxy's read frontend" "2 3"
READ_SPREAD=$(for _ in 1 2 3 4 5 6; do server_id $R; done | sort | uniq -c | awk '{printf "%sdb%s:%s", (NR>1?" ":""), $2, $1}')
echo "bench: ports ready: write 127.0.0.1:$W, read 127.0.0.1:$R (6 new connections went to $READ_SPREAD), read causal off 127.0.0.1:$R_OFF; HAProxy write $HW, read $HR; MariaDB $(mariadbd --version | awk '{print $3}') on 127.0.0.11-13:$P"


# ---- sysbench ---------------------------------------------------------------------
SB_COMMON=(--db-driver=mysql --mysql-user=sbtest --mysql-password="$PASS" --mysql-db=sbtest
  --tables=$TABLES --table-size=$TABLE_SIZE)
echo "bench: preparing $TABLES tables of $TABLE_SIZE rows through the primary"
$LOAD_CPU sysbench oltp_common "${SB_COMMON[@]}" --mysql-host=127.0.0.11 --mysql-port=$P --threads=$TABLES prepare \
  >"$WORK/prepare.log" 2>&1 || die "sysbench prepare failed" "$WORK/prepare.log"
sync_replicas

# Where the proxies run: "server", on CPU 0 with the database servers (their CPU
# comes out of the servers'), or "client", on CPU 1 with the load generator (where
# the sidecar runs in production: on the application's host). The same processes,
# moved with taskset.
PLACEMENTS="server client"
[ -n "$SERVER_CPU" ] || PLACEMENTS="server"
place() {
  local cpu=0; [ $1 = client ] && cpu=1
  [ -n "$SERVER_CPU" ] || return 0
  for p in $HAP_PID ${SC_PID[web1]} ${SC_PID[web2]}; do taskset -a -p -c $cpu $p >/dev/null; done
}

sessions() { # which replicas hold sysbench's connections now, as "db2:N db3:M"
  local i out=""
  for i in 2 3; do out+="${out:+ }db$i:$(sql $i "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER='sbtest'")"; done
  echo "$out"
}
# The hypervisor's share of a CPU between two of its /proc/stat lines (steal), in
# percent: on a shared VM it comes and goes, and a run it hit is slower for it.
steal_pct() { printf '%s\n%s\n' "$1" "$2" | awk '{t=0; for (i=2; i<=NF; i++) t+=$i; if (NR==1) {s1=$9; t1=t} else printf "%d", (t>t1) ? 100*($9-s1)/(t-t1) : 0}'; }
cpu_ticks() { [ -z "${1:-}" ] && echo 0 || awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, in clock ticks
sb_run() { # test host port [proxy-pid] -> SB_TPS SB_P95 SB_IGN SB_STEAL SB_CPU_US SB_SESS
  # SB_CPU_US: the proxy's CPU time per transaction, µs; SB_SESS (read runs): where sysbench's connections are
  local pid c0 t0
  SB_SESS=""
  c0=$(grep '^cpu0 ' /proc/stat); t0=$(cpu_ticks "${4:-}")
  $LOAD_CPU sysbench "$1" "${SB_COMMON[@]}" --mysql-host="$2" --mysql-port="$3" --threads=$THREADS \
    --time=$DUR --report-interval=0 --percentile=95 run >"$WORK/sysbench.out" 2>&1 &
  pid=$!
  if [ "$1" = oltp_read_only ]; then sleep $(( (DUR + 1) / 2 )); SB_SESS=$(sessions | tr ' ' ','); fi
  wait $pid || die "sysbench $1 through $2:$3 failed" "$WORK/sysbench.out" "$WORK/sidecar-web1.log" "$WORK/haproxy.log"
  SB_STEAL=$(steal_pct "$c0" "$(grep '^cpu0 ' /proc/stat)")
  SB_CPU_US=$(awk -v d=$(( $(cpu_ticks "${4:-}") - t0 )) -v hz=$(getconf CLK_TCK) -v n="$(awk '/transactions:/ {print $2}' "$WORK/sysbench.out")" \
    'BEGIN {printf "%d", (n > 0) ? d * 1e6 / hz / n : 0}')
  read SB_TPS SB_P95 SB_IGN <<<"$(awk '/transactions:/ {gsub(/\(/, "", $3); tps=$3} /95th percentile:/ {p95=$3} /ignored errors:/ {ign=$3}
    END {printf "%s %s %s", tps, p95, ign}' "$WORK/sysbench.out")"
  [ -n "$SB_TPS" ] && [ -n "$SB_P95" ] || die "sysbench $1 through $2:$3 printed no figures" "$WORK/sysbench.out"
}
sb_target() { # w|r path -> "host port [proxy-pid]"
  case $1-$2 in
    w-direct) echo "127.0.0.11 $P" ;;
    w-haproxy) echo "127.0.0.1 $HW $HAP_PID" ;;
    w-port) echo "127.0.0.1 $W ${SC_PID[web1]}" ;;
    r-direct) echo "127.0.0.12,127.0.0.13 $P" ;;
    r-haproxy) echo "127.0.0.1 $HR $HAP_PID" ;;
    r-port) echo "127.0.0.1 $R ${SC_PID[web1]}" ;;
  esac
}
rotate() { # round words... -> the words, starting at the round's turn (each path runs first once in 3 rounds)
  local r=$1; shift
  local a=("$@") n=$# i
  for i in $(seq 0 $((n - 1))); do printf '%s ' "${a[$(( (i + r - 1) % n ))]}"; done
}
declare -A TPS P95 IGN SESS STEAL PCPU
PATHS="direct haproxy port"
for pl in $PLACEMENTS; do
  place $pl
  for r in $(seq 1 $ROUNDS); do
    for t in $(rotate $r $PATHS); do
      sync_replicas
      sb_run oltp_write_only $(sb_target w $t); tps=$SB_TPS; p95=$SB_P95; ign=$SB_IGN
      TPS[$pl-w-$t]+="$tps "; P95[$pl-w-$t]+="$p95 "; IGN[$pl-w-$t]+="$ign "; STEAL[$pl-w-$t]+="$SB_STEAL "; PCPU[$pl-w-$t]+="$SB_CPU_US "
      echo "bench: proxies on the $pl CPU, round $r oltp_write_only $t $tps tps p95 $p95 ms (proxy CPU $SB_CPU_US us/transaction, ignored errors $ign, CPU 0 steal $SB_STEAL%)"
    done
    sync_replicas
    for t in $(rotate $r $PATHS); do
      sb_run oltp_read_only $(sb_target r $t); tps=$SB_TPS; p95=$SB_P95; ign=$SB_IGN; sess=$SB_SESS
      TPS[$pl-r-$t]+="$tps "; P95[$pl-r-$t]+="$p95 "; IGN[$pl-r-$t]+="$ign "; SESS[$pl-r-$t]+="$sess "; STEAL[$pl-r-$t]+="$SB_STEAL "; PCPU[$pl-r-$t]+="$SB_CPU_US "
      echo "bench: proxies on the $pl CPU, round $r oltp_read_only $t $tps tps p95 $p95 ms (proxy CPU $SB_CPU_US us/transaction, sysbench's connections: $sess, CPU 0 steal $SB_STEAL%)"
    done
  done
done
place server

# ---- new connections --------------------------------------------------------------
# db-connect: CONN_LOOPS loops each open a new connection, SELECT @@server_id, close.
declare -A CONN
CONN_PATHS="direct haproxy causal_on causal_off"
conn_target() {
  case $1 in
    direct) echo 127.0.0.12:$P ;;
    haproxy) echo 127.0.0.1:$HR ;;
    causal_on) echo 127.0.0.1:$R ;;
    causal_off) echo 127.0.0.1:$R_OFF ;;
  esac
}
for pl in $PLACEMENTS; do
  place $pl
  for r in $(seq 1 $CONN_ROUNDS); do
    for t in $(rotate $r $CONN_PATHS); do
      out=$($LOAD_CPU "$BIN/db-connect" $(conn_target $t) sbtest "$PASS" $CONN_DUR $CONN_LOOPS 2>"$WORK/db-connect.err") \
        || die "db-connect to $t ($(conn_target $t)) failed" "$WORK/db-connect.err" "$WORK/sidecar-web1.log" "$WORK/sidecar-web2.log"
      CONN[$pl-$t]+="$out"$'\n'
      echo "bench: proxies on the $pl CPU, round $r new connections $t $out"
      # The TIME_WAIT sockets of one run drain a little before the next.
      sleep 1
    done
  done
done
place server

# ---- figures ----------------------------------------------------------------------
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { echo $1 | tr ' ' '\n' | { grep . || true; } | median; }
spr() { echo $1 | tr ' ' '\n' | { grep . || true; } | sort -n | awk 'NR==1{min=$1} {max=$1} END {printf "%s-%s", min, max}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0) ? a / b : 0}'; }
jfield() { { grep -o "\"$2\":[0-9.]*" <<<"$1" || true; } | cut -d: -f2; }
declare -A M
for pl in $PLACEMENTS; do
  for c in w r; do
    for t in $PATHS; do
      M[$pl-$c-$t-tps]=$(med "${TPS[$pl-$c-$t]}"); M[$pl-$c-$t-p95]=$(med "${P95[$pl-$c-$t]}"); M[$pl-$c-$t-cpu]=$(med "${PCPU[$pl-$c-$t]}")
    done
    M[$pl-$c-pd]=$(ratio ${M[$pl-$c-port-tps]} ${M[$pl-$c-direct-tps]})
    M[$pl-$c-ph]=$(ratio ${M[$pl-$c-port-tps]} ${M[$pl-$c-haproxy-tps]})
  done
  for t in $CONN_PATHS; do
    for f in connections_per_s p50_us p99_us; do M[$pl-c-$t-$f]=$(jfield "${CONN[$pl-$t]}" $f | median); done
    # Connections the master took (server_id 1): a read port falls back to it.
    M[$pl-c-$t-master]=$( { grep -o '"1":[0-9]*' <<<"${CONN[$pl-$t]}" || true; } | awk -F: '{s += $2} END {print s + 0}')
  done
  M[$pl-causal-us]=$(( ${M[$pl-c-causal_on-p50_us]%.*} - ${M[$pl-c-causal_off-p50_us]%.*} ))
  echo "bench: proxies on the $pl CPU: oltp_write_only tps direct ${M[$pl-w-direct-tps]}, haproxy ${M[$pl-w-haproxy-tps]}, write port ${M[$pl-w-port-tps]} (port/direct ${M[$pl-w-pd]}, port/haproxy ${M[$pl-w-ph]}); p95 ms ${M[$pl-w-direct-p95]} / ${M[$pl-w-haproxy-p95]} / ${M[$pl-w-port-p95]}; proxy CPU per transaction haproxy ${M[$pl-w-haproxy-cpu]} us, port ${M[$pl-w-port-cpu]} us"
  echo "bench: proxies on the $pl CPU: oltp_read_only tps direct ${M[$pl-r-direct-tps]}, haproxy ${M[$pl-r-haproxy-tps]}, read port ${M[$pl-r-port-tps]} (port/direct ${M[$pl-r-pd]}, port/haproxy ${M[$pl-r-ph]}); p95 ms ${M[$pl-r-direct-p95]} / ${M[$pl-r-haproxy-p95]} / ${M[$pl-r-port-p95]}; proxy CPU per transaction haproxy ${M[$pl-r-haproxy-cpu]} us, port ${M[$pl-r-port-cpu]} us"
  echo "bench: proxies on the $pl CPU: new read connections/s direct ${M[$pl-c-direct-connections_per_s]}, haproxy ${M[$pl-c-haproxy-connections_per_s]}, read port causal on ${M[$pl-c-causal_on-connections_per_s]} (${M[$pl-c-causal_on-master]} to the master), causal off ${M[$pl-c-causal_off-connections_per_s]}; p50 us ${M[$pl-c-direct-p50_us]} / ${M[$pl-c-haproxy-p50_us]} / ${M[$pl-c-causal_on-p50_us]} / ${M[$pl-c-causal_off-p50_us]}; the causal check costs ${M[$pl-causal-us]} us at open"
done

mkdir -p benches/results
json_list() { echo "[$(echo $1 | tr ' ' ',')]"; }
json_strs() { echo "[$(echo $1 | tr ' ' '\n' | { grep . || true; } | sed 's/.*/"&"/' | paste -sd,)]"; }
{
  echo "{"
  echo "  \"machine\": \"$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)\","
  echo "  \"mariadb\": \"$(mariadbd --version | awk '{print $3}')\", \"sysbench\": \"$(sysbench --version | awk '{print $2}')\", \"haproxy\": \"$(haproxy -v | awk 'NR==1 {print $3}')\","
  echo "  \"quick\": $([ $QUICK = 1 ] && echo true || echo false), \"seconds\": $DUR, \"rounds\": $ROUNDS, \"threads\": $THREADS, \"tables\": $TABLES, \"table_size\": $TABLE_SIZE,"
  echo "  \"new_connection_seconds\": $CONN_DUR, \"new_connection_rounds\": $CONN_ROUNDS, \"new_connection_loops\": $CONN_LOOPS,"
  first=1
  for pl in $PLACEMENTS; do
    [ $first = 1 ] || echo "  ,"; first=0
    echo "  \"proxies_on_${pl}_cpu\": {"
    for c in w r; do
      k=write; [ $c = r ] && k=read
      echo "    \"oltp_${k}_only\": {"
      for t in $PATHS; do
        printf '      "%s": {"tps": %s, "p95_ms": %s, "ignored_errors": %s, "cpu0_steal_pct": %s, "proxy_cpu_us_per_transaction": %s, "median_tps": %s, "median_p95_ms": %s%s},\n' $t \
          "$(json_list "${TPS[$pl-$c-$t]}")" "$(json_list "${P95[$pl-$c-$t]}")" "$(json_list "${IGN[$pl-$c-$t]}")" "$(json_list "${STEAL[$pl-$c-$t]}")" "$(json_list "${PCPU[$pl-$c-$t]}")" \
          ${M[$pl-$c-$t-tps]} ${M[$pl-$c-$t-p95]} "$([ $c = r ] && echo ", \"sessions\": $(json_strs "${SESS[$pl-$c-$t]}")")"
      done
      echo "      \"port_vs_direct\": ${M[$pl-$c-pd]}, \"port_vs_haproxy\": ${M[$pl-$c-ph]}"
      echo "    },"
    done
    echo "    \"new_connections\": {"
    for t in $CONN_PATHS; do printf '      "%s": [%s],\n' $t "$(echo "${CONN[$pl-$t]}" | grep . | paste -sd,)"; done
    echo "      \"causal_check_us\": ${M[$pl-causal-us]}"
    echo "    }"
    echo "  }"
  done
  echo "}"
} > benches/results/databases-latest.json
echo "bench: results in benches/results/databases-latest.json"

if [ $QUICK = 0 ]; then
  cp benches/results/databases-latest.json "benches/results/databases-$(date +%Y%m%d-%H%M%S).json"
  {
    for pl in $PLACEMENTS; do
      echo "Proxies on the $pl CPU:"
      echo
      echo "| path | oltp_write_only tps (median) | spread | p95 ms | proxy CPU µs/tx | oltp_read_only tps (median) | spread | p95 ms | proxy CPU µs/tx |"
      echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
      for t in $PATHS; do
        name=$t; case $t in direct) name="direct (reads: db2,db3 by sysbench)" ;; haproxy) name="HAProxy, mode tcp" ;; port) name="**the sidecar's ports** (read: causal on)" ;; esac
        echo "| $name | ${M[$pl-w-$t-tps]} | $(spr "${TPS[$pl-w-$t]}") | ${M[$pl-w-$t-p95]} | ${M[$pl-w-$t-cpu]} | ${M[$pl-r-$t-tps]} | $(spr "${TPS[$pl-r-$t]}") | ${M[$pl-r-$t-p95]} | ${M[$pl-r-$t-cpu]} |"
      done
      echo "| port / direct | ${M[$pl-w-pd]} | | | | ${M[$pl-r-pd]} | | | |"
      echo "| port / HAProxy | ${M[$pl-w-ph]} | | | | ${M[$pl-r-ph]} | | | |"
      echo
      echo "| new read connections | connections/s (median) | p50 µs | p99 µs | to the master |"
      echo "| --- | --- | --- | --- | --- |"
      for t in $CONN_PATHS; do echo "| $t | ${M[$pl-c-$t-connections_per_s]} | ${M[$pl-c-$t-p50_us]} | ${M[$pl-c-$t-p99_us]} | ${M[$pl-c-$t-master]} |"; done
      echo
      echo "Causal check at connection open: ${M[$pl-causal-us]} µs (p50 causal on − p50 causal off)."
      echo
    done
  } > benches/results/databases-latest.md
  echo "bench: wrote benches/results/databases-latest.md (merge into docs/benchmarks.md by hand)"
fi
