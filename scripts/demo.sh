#!/usr/bin/env bash
# Builds BZZZ and starts a local demo cluster on 127.0.0.1 (default 4 nodes,
# web/API on ports 8080..). Extra arguments go to `bzzz demo`, e.g.
#   scripts/demo.sh --nodes 6 --base-port 9000
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found; install Rust (rustup) first" >&2; exit 1; }
cargo build --release --locked -p bzzz
args=("$@")
case " ${args[*]:-} " in *" --nodes "*) ;; *) args=(--nodes 4 "${args[@]}") ;; esac
exec ./target/release/bzzz demo "${args[@]}"
