#!/usr/bin/env bash
# Runs every test of the workspace on a machine that has only Rust: installs the
# real clients the end-to-end tests drive (dig, named-checkzone, nsd-checkzone,
# kzonecheck, curl, git, openssl, ssh, sshd, chromium, chromedriver and etcd) from
# Debian's packages if they are missing, then lints, builds and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

need=()
command -v dig >/dev/null 2>&1 || need+=(dnsutils)
command -v named-checkzone >/dev/null 2>&1 || need+=(bind9-utils)
# The flat export must load in NSD and Knot too.
command -v nsd-checkzone >/dev/null 2>&1 || need+=(nsd)
command -v kzonecheck >/dev/null 2>&1 || need+=(knot-dnssecutils)
# The secondaries the zone-transfer tests start (tests/secondaries.rs).
[ -x /usr/sbin/named ] || need+=(bind9)
[ -x /usr/sbin/knotd ] || need+=(knot)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v git >/dev/null 2>&1 || need+=(git)
# Key files are checked against what OpenSSL reads and writes.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
# The partition test puts hosts in network namespaces and cuts links with nftables.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
# The console test drives a headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# The shared store's battery and high-availability tests start their own etcd.
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# The database tests (tests/db_ports.rs) run a real MariaDB cluster and its client.
[ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "test.sh: rustfmt not installed; skipping the format check"
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --quiet -- -D warnings
else
  echo "test.sh: clippy not installed; skipping the lint"
fi

# Every import points down (docs/architecture.md): the sidecar links neither the
# directory nor its server side, and no two files of a crate import each other.
if cargo tree -p switchboard-sidecar -e normal --prefix none | grep -E '^(sled|hickory-server|switchboard-directory) '; then
  echo "test.sh: switchboard-sidecar depends on the crates above; it may use switchboard-proto and hickory-resolver only" >&2
  exit 1
fi
./scripts/check-imports.sh

cargo build --workspace --bins --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
passed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i-1)} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i-1)} END {print s + 0}' "$log")
echo "tests: $passed passed, $failed failed"
exit $status
