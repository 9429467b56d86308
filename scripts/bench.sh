#!/usr/bin/env bash
# Runs the benchmarks that print the figures in docs/benchmarks.md. Installs
# the baselines they compare against (Debian etcd-server for the control
# plane, ansible for SSH deploys; openssh-server for the lab hosts' sshd).
# The namespace-lab parts need root.
#   scripts/bench.sh            # all
#   scripts/bench.sh control    # one (mesh, keys, control, deploy)
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in iproute2 iptables etcd-server ansible openssh-server; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # Debian's policy keeps the etcd service from starting on install; the
    # benchmark starts its own members inside the lab.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
  fi
fi

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(mesh keys control deploy)
for b in "${benches[@]}"; do
  echo "==> cargo bench -p bzzz --bench $b"
  cargo bench -p bzzz --bench "$b"
done
