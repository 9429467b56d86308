#!/usr/bin/env bash
# Runs every BZZZ test. On a fresh Debian machine it first installs what the
# tests need (as root, or through sudo): iproute2 and iptables for the
# network-namespace lab, chromium and chromium-driver for the web UI tests,
# openssh-server for the deploy lab, shellcheck for the scripts.
# Network-namespace tests need root; under CI (CI set) they must run,
# elsewhere they are skipped with a message when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

# openssh-server: real sshd per lab host (deploy tests; never started in
# the root namespace); shellcheck: install.sh lint; bubblewrap and git:
# the agents' sandbox and their repositories (git http-backend).
DEBIAN_PACKAGES=(iproute2 iptables chromium chromium-driver openssh-server shellcheck bubblewrap git)

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ensure_debian_packages "${DEBIAN_PACKAGES[@]}"

# A real GGUF (SmolLM2-135M) for the model tests.
TEST_SMOLLM2_GGUF="$(ensure_smollm2)"
export TEST_SMOLLM2_GGUF
# A Python with llama.cpp's server (xllamacpp) for the managed backends.
TEST_PYTHON="$(ensure_python_venv)"
export TEST_PYTHON

command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> shellcheck"
shellcheck -s sh install.sh
shellcheck -x scripts/*.sh
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
