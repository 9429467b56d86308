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
