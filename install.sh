#!/bin/sh
# BZZZ installer (SPEC §2). POSIX sh; works piped (`curl -fsSL URL | sh -s -- --yes`)
# and from a checkout (`./install.sh`). `./install.sh --help` lists every option.
#
# What it does, in order:
#   1. checks this machine (OS, arch, init system, CPU, RAM, disk, NVIDIA GPU,
#      Ollama, the HTTP and P2P ports, write access) and prints a report;
#      refuses, naming the reason, when a requirement fails;
#   2. installs the binary (a file, a release URL, or a cargo build of the
#      checkout), writes the config, creates the service (a hardened systemd
#      unit where systemd runs, else a small pid-file supervisor script);
#   3. starts the node (setup mode until a cluster exists) and prints the
#      setup URL.
# Re-running is safe: what is already right is left alone. `--uninstall`
# removes what it installed (the node's data directory only with --purge).
#
# Exit codes: 0 done, 1 usage or internal error, 2 a check failed,
# 3 the node did not start, 4 the binary's checksum does not match --sha256.
set -eu

VERSION_MIN_RAM_MB=512
VERSION_MIN_DISK_MB=300

# ---- options (flags win over BZZZ_INSTALL_* variables) ----------------------
YES=${BZZZ_INSTALL_YES:-0}
PREFIX=${BZZZ_INSTALL_PREFIX:-}
BINARY=${BZZZ_INSTALL_BINARY:-}
URL=${BZZZ_INSTALL_URL:-}
SHA256=${BZZZ_INSTALL_SHA256:-}
HTTP_PORT=${BZZZ_INSTALL_HTTP_PORT:-8080}
P2P_PORT=${BZZZ_INSTALL_P2P_PORT:-4140}
SERVICE=${BZZZ_INSTALL_SERVICE:-auto}
JOIN_TOKEN_FILE=${BZZZ_INSTALL_JOIN_TOKEN_FILE:-}
# Internal: `bzzz deploy` puts the join token in a line before this script
# on stdin (never on a command line).
_bzzz_join_token=${_bzzz_join_token:-}
BOOTSTRAP=${BZZZ_INSTALL_BOOTSTRAP:-}
MDNS=${BZZZ_INSTALL_MDNS:-true}
BUILD=0
MODE=install
REPORT=human
PURGE=0
START=1
START_TIMEOUT=${BZZZ_INSTALL_START_TIMEOUT:-60}

usage() {
  cat <<'EOF'
Usage: install.sh [OPTIONS]

Install (or check, or remove) a BZZZ node on this machine.

Options:
  --yes, -y              Unattended: no prompts (also BZZZ_INSTALL_YES=1).
  --prefix DIR           Install everything under DIR (bin/, etc/, data/, log/,
                         run/). Default: system paths as root
                         (/usr/local/bin, /etc/bzzz, /var/lib/bzzz), ~/.bzzz
                         otherwise.
  --binary FILE          Install this bzzz binary.
  --url URL              Download the binary from URL (curl or wget);
                         use with --sha256.
  --sha256 HEX           Expected SHA-256 of the binary (refused on mismatch).
  --build                Build the checkout with cargo (default from a
                         checkout when no --binary/--url is given).
  --http-port PORT       HTTP API and web UI port (default 8080).
  --p2p-port PORT        P2P port, TCP and QUIC (default 4140).
  --bootstrap MULTIADDR  A member to join through (repeatable).
  --join-token-file F    Join an existing cluster with this token file.
  --no-mdns              Do not discover peers on the local network.
  --service KIND         auto (default), systemd or fallback.
  --no-start             Install but do not start.
  --check                Only run the checks and print the report.
  --report FORMAT        human (default) or kv (tab-separated, for scripts).
  --uninstall            Stop and remove the installation.
  --purge                With --uninstall: also delete the data directory
                         (node identity and key shares).
  --help, -h             This text.

Every option has a BZZZ_INSTALL_* variable (BZZZ_INSTALL_PREFIX, ..._BINARY,
..._URL, ..._SHA256, ..._HTTP_PORT, ..._P2P_PORT, ..._SERVICE, ..._JOIN_TOKEN_FILE,
..._BOOTSTRAP (comma-separated), ..._MDNS=false, ..._START_TIMEOUT seconds).
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case $1 in
    -y|--yes) YES=1 ;;
    --prefix) need_arg "$@"; PREFIX=$2; shift ;;
    --binary) need_arg "$@"; BINARY=$2; shift ;;
    --url) need_arg "$@"; URL=$2; shift ;;
    --sha256) need_arg "$@"; SHA256=$2; shift ;;
    --build) BUILD=1 ;;
    --http-port) need_arg "$@"; HTTP_PORT=$2; shift ;;
    --p2p-port) need_arg "$@"; P2P_PORT=$2; shift ;;
    --bootstrap) need_arg "$@"; BOOTSTRAP=${BOOTSTRAP:+$BOOTSTRAP,}$2; shift ;;
    --join-token-file) need_arg "$@"; JOIN_TOKEN_FILE=$2; shift ;;
    --no-mdns) MDNS=false ;;
    --service) need_arg "$@"; SERVICE=$2; shift ;;
    --no-start) START=0 ;;
    --check) MODE=check ;;
    --report) need_arg "$@"; REPORT=$2; shift ;;
    --uninstall) MODE=uninstall ;;
    --purge) PURGE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: error: unknown option $1 (see --help)" >&2; exit 1 ;;
  esac
  shift
done

is_port() { case $1 in ''|*[!0-9]*) return 1 ;; esac; [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }
is_port "$HTTP_PORT" || die "--http-port must be a number between 1 and 65535 (got '$HTTP_PORT')"
is_port "$P2P_PORT" || die "--p2p-port must be a number between 1 and 65535 (got '$P2P_PORT')"
[ "$HTTP_PORT" != "$P2P_PORT" ] || die "--http-port and --p2p-port must differ"
case $SERVICE in auto|systemd|fallback) ;; *) die "--service must be auto, systemd or fallback" ;; esac
case $REPORT in human|kv) ;; *) die "--report must be human or kv" ;; esac
case $MDNS in true|false) ;; *) die "BZZZ_INSTALL_MDNS must be true or false" ;; esac
case $START_TIMEOUT in ''|*[!0-9]*) die "BZZZ_INSTALL_START_TIMEOUT must be a number of seconds" ;; esac
[ -z "$SHA256" ] || case $SHA256 in *[!0-9a-f]*) die "--sha256 must be 64 lowercase hex digits" ;; esac

# ---- layout --------------------------------------------------------------------
UID_NOW=$(id -u)
if [ -z "$PREFIX" ] && [ "$UID_NOW" -ne 0 ]; then
  [ -n "${HOME:-}" ] || die "HOME is not set; pass --prefix DIR"
  PREFIX=$HOME/.bzzz
fi
case $PREFIX in ''|/*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
if [ -z "$PREFIX" ]; then
  BIN_DIR=/usr/local/bin; ETC_DIR=/etc/bzzz; DATA_DIR=/var/lib/bzzz
  LOG_DIR=/var/log/bzzz; RUN_DIR=/run/bzzz; UNIT_NAME=bzzz
else
  PREFIX=${PREFIX%/}
  BIN_DIR=$PREFIX/bin; ETC_DIR=$PREFIX/etc; DATA_DIR=$PREFIX/data
  LOG_DIR=$PREFIX/log; RUN_DIR=$PREFIX/run
  # One unit per prefix, so several prefixes can coexist.
  UNIT_NAME=bzzz-$(printf '%s' "$PREFIX" | cksum | cut -d' ' -f1)
fi
CONFIG=$ETC_DIR/bzzz.yaml
TOKEN=$ETC_DIR/join-token
PIDFILE=$RUN_DIR/bzzz.pid
LOGFILE=$LOG_DIR/bzzz.log
UNIT_FILE=/etc/systemd/system/$UNIT_NAME.service

HAVE_SYSTEMD=0
[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1 && HAVE_SYSTEMD=1
if [ "$SERVICE" = auto ]; then
  if [ "$HAVE_SYSTEMD" = 1 ] && [ "$UID_NOW" -eq 0 ]; then SERVICE=systemd; else SERVICE=fallback; fi
elif [ "$SERVICE" = systemd ]; then
  [ "$HAVE_SYSTEMD" = 1 ] || die "--service systemd: systemd is not running here"
  [ "$UID_NOW" -eq 0 ] || die "--service systemd needs root"
fi

# ---- report ----------------------------------------------------------------------
FAILED=0
check() { # check NAME ok|warn|fail MESSAGE
  [ "$2" = fail ] && FAILED=1
  if [ "$REPORT" = kv ]; then
    printf 'check\t%s\t%s\t%s\n' "$1" "$2" "$3"
  else
    case $2 in ok) s='ok  ' ;; warn) s='WARN' ;; *) s='FAIL' ;; esac
    printf '  %s  %-10s %s\n' "$s" "$1" "$3"
  fi
}
fact() { [ "$REPORT" = kv ] && printf 'fact\t%s\t%s\n' "$1" "$2"; return 0; }
say() { if [ "$REPORT" = kv ]; then printf 'info\t%s\n' "$*"; else echo "$*"; fi; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
  else echo unknown; fi
}

pid_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# The node id of the running node PID, from the runtime file the node
# writes once it listens (<data_dir>/node.json); empty until then. Cheaper
# than asking its API (no process to start).
node_id_of() {
  f=$DATA_DIR/node.json
  [ -n "$1" ] && [ -r "$f" ] || return 0
  p=$(sed -n 's/.*"pid" *: *\([0-9]*\).*/\1/p' "$f" | head -n 1)
  [ "$p" = "$1" ] || return 0
  sed -n 's/.*"node_id" *: *"\([1-9A-HJ-NP-Za-km-z]*\)".*/\1/p' "$f" | head -n 1
}
running_pid() {
  if [ "$SERVICE" = systemd ] && [ -f "$UNIT_FILE" ]; then
    systemctl show -p MainPID --value "$UNIT_NAME" 2>/dev/null | grep -v '^0$' || true
  elif [ -f "$PIDFILE" ]; then
    p=$(cat "$PIDFILE" 2>/dev/null || true)
    if pid_alive "$p"; then echo "$p"; fi
  fi
}

# Is PORT (decimal) bound on this machine? Reads /proc/net, no tools needed.
port_in_use() { # port_in_use PORT tcp|udp
  hex=$(printf '%04X' "$1")
  for f in /proc/net/$2 /proc/net/${2}6; do
    [ -r "$f" ] || continue
    # tcp: state 0A = LISTEN; udp: 07 = bound (unconnected).
    if [ "$2" = tcp ]; then st=0A; else st=07; fi
    if awk -v p=":$hex" -v s="$st" 'NR > 1 && substr($2, length($2) - 4) == p && $4 == s { found = 1 } END { exit !found }' "$f"; then
      return 0
    fi
  done
  return 1
}

run_checks() {
  [ "$REPORT" = human ] && echo "BZZZ install check"
  os=$(uname -s)
  distro=unknown
  if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    distro=$(. /etc/os-release && printf '%s' "${PRETTY_NAME:-${NAME:-unknown}}")
  fi
  if [ "$os" = Linux ]; then check os ok "Linux ($distro)"; else check os fail "$os is not supported (Linux only)"; fi
  fact os "$os"; fact distro "$distro"

  arch=$(uname -m)
  case $arch in
    x86_64|amd64|aarch64|arm64) check arch ok "$arch" ;;
    *) check arch fail "$arch is not supported (x86_64 or aarch64)" ;;
  esac
  fact arch "$arch"

  if [ "$HAVE_SYSTEMD" = 1 ]; then init=systemd; else init=none; fi
  check init ok "$init (service: $SERVICE)"
  fact init "$init"; fact service "$SERVICE"

  cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || grep -c ^processor /proc/cpuinfo 2>/dev/null || echo 1)
  check cpu ok "$cpus cores"
  fact cpus "$cpus"

  mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null || echo 0)
  mem_mb=$((mem_kb / 1024))
  if [ "$mem_mb" -ge "$VERSION_MIN_RAM_MB" ]; then check memory ok "$mem_mb MiB"
  else check memory fail "$mem_mb MiB of memory; at least $VERSION_MIN_RAM_MB MiB needed"; fi
  fact memory_mb "$mem_mb"

  # Free space where the data goes (the nearest existing parent).
  d=$DATA_DIR
  while [ ! -d "$d" ]; do d=$(dirname "$d"); done
  free_mb=$(df -Pk "$d" 2>/dev/null | awk 'NR == 2 { print int($4 / 1024) }')
  free_mb=${free_mb:-0}
  if [ "$free_mb" -ge "$VERSION_MIN_DISK_MB" ]; then check disk ok "$free_mb MiB free in $d"
  else check disk fail "$free_mb MiB free in $d; at least $VERSION_MIN_DISK_MB MiB needed"; fi
  fact disk_free_mb "$free_mb"

  # Write access.
  d=${PREFIX:-$ETC_DIR}
  while [ ! -d "$d" ]; do d=$(dirname "$d"); done
  if [ -w "$d" ]; then check access ok "can write $d"
  else check access fail "cannot write $d (run as root, or pass --prefix DIR)"; fi

  if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null) && [ -n "$gpus" ]; then
    n=$(printf '%s\n' "$gpus" | wc -l | tr -d ' ')
    check gpu ok "$n NVIDIA GPU(s): $(printf '%s' "$gpus" | tr '\n' ';')"
    fact gpus "$n"
  else
    check gpu ok "no NVIDIA GPU found (CPU node)"
    fact gpus 0
  fi

  if command -v ollama >/dev/null 2>&1; then check ollama ok "found at $(command -v ollama)"; fact ollama yes
  else check ollama ok "not installed (optional: models are served by Ollama)"; fact ollama no; fi

  # Ports: free, or held by this very installation.
  mine=$(running_pid || true)
  for spec in "http:$HTTP_PORT:tcp" "p2p:$P2P_PORT:tcp" "p2p-quic:$P2P_PORT:udp"; do
    name=${spec%%:*}; rest=${spec#*:}; port=${rest%%:*}; proto=${rest#*:}
    if port_in_use "$port" "$proto"; then
      if [ -n "$mine" ]; then check "$name" ok "$port/$proto in use by this BZZZ installation (pid $mine)"
      else check "$name" fail "$port/$proto is already in use by another program (choose another with --${name%-quic}-port)"; fi
    else
      check "$name" ok "$port/$proto free"
    fi
  done

  # How a deploy can fetch the binary (faster than an upload over SSH).
  if command -v curl >/dev/null 2>&1; then fact fetch curl
  elif command -v wget >/dev/null 2>&1; then fact fetch wget
  else fact fetch none; fi

  # The current installation, if any.
  if [ -x "$BIN_DIR/bzzz" ]; then fact installed_sha256 "$(sha256_of "$BIN_DIR/bzzz")"; else fact installed_sha256 none; fi
  if [ -n "$mine" ]; then
    fact running yes
    id=$(node_id_of "$mine")
    fact node_id "${id:-unknown}"
  else
    fact running no
  fi
  fact prefix "${PREFIX:-/}"
}

confirm() { # confirm QUESTION: yes on --yes; asks on a TTY; refuses otherwise
  [ "$YES" = 1 ] && return 0
  # (The probe runs in a subshell: a failed redirection on a special
  # built-in would end this shell.)
  if [ -t 0 ] || (: </dev/tty) 2>/dev/null; then
    printf '%s [y/N] ' "$1" >/dev/tty
    read -r answer </dev/tty || answer=
    case $answer in y|Y|yes|YES) return 0 ;; esac
    echo "install.sh: cancelled" >&2; exit 1
  fi
  die "no terminal to ask on; pass --yes for an unattended install"
}

stop_node() {
  if [ "$SERVICE" = systemd ] && [ -f "$UNIT_FILE" ]; then
    systemctl stop "$UNIT_NAME" 2>/dev/null || true
  elif [ -x "$BIN_DIR/bzzz-service" ]; then
    "$BIN_DIR/bzzz-service" stop || true
  fi
}

# ---- uninstall ------------------------------------------------------------------
if [ "$MODE" = uninstall ]; then
  confirm "Remove BZZZ from ${PREFIX:-this machine}?"
  stop_node
  if [ -f "$UNIT_FILE" ]; then
    systemctl disable "$UNIT_NAME" 2>/dev/null || true
    rm -f "$UNIT_FILE"; systemctl daemon-reload 2>/dev/null || true
  fi
  rm -f "$BIN_DIR/bzzz" "$BIN_DIR/bzzz-service" "$BIN_DIR/bzzz-start" "$CONFIG" "$TOKEN" "$PIDFILE"
  rmdir "$RUN_DIR" 2>/dev/null || true
  if [ "$PURGE" = 1 ]; then rm -rf "$DATA_DIR" "$LOG_DIR"; fi
  rmdir "$ETC_DIR" "$LOG_DIR" 2>/dev/null || true
  if [ -n "$PREFIX" ]; then rmdir "$BIN_DIR" "$PREFIX" 2>/dev/null || true; fi
  if [ "$PURGE" = 1 ] || [ ! -d "$DATA_DIR" ]; then say "BZZZ removed."
  else say "BZZZ removed; the node's data (identity, key shares) is kept in $DATA_DIR (--purge deletes it)."; fi
  exit 0
fi

run_checks
if [ "$MODE" = check ]; then
  [ "$FAILED" = 0 ] || exit 2
  exit 0
fi
if [ "$FAILED" = 1 ]; then
  echo "install.sh: refusing to install: a check failed (see FAIL above)" >&2
  exit 2
fi

# ---- the binary ------------------------------------------------------------------
SELF_DIR=
case $0 in install.sh|*/install.sh) SELF_DIR=$(cd "$(dirname "$0")" && pwd) ;; esac
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bzzz-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM

if [ -z "$BINARY" ] && [ -z "$URL" ]; then
  if [ -n "$SELF_DIR" ] && [ -f "$SELF_DIR/Cargo.toml" ]; then BUILD=1
  elif [ -x "$BIN_DIR/bzzz" ]; then BINARY=$BIN_DIR/bzzz
  else die "no binary: pass --binary FILE or --url URL (or run from a checkout to build it)"; fi
fi
if [ -n "$URL" ]; then
  say "Downloading $URL"
  if command -v curl >/dev/null 2>&1; then curl -fsSL -o "$TMP/bzzz" "$URL" || die "download failed: $URL"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$TMP/bzzz" "$URL" || die "download failed: $URL"
  else die "neither curl nor wget is installed"; fi
  BINARY=$TMP/bzzz
elif [ "$BUILD" = 1 ] && [ -z "$BINARY" ]; then
  if [ -z "$SELF_DIR" ] || [ ! -f "$SELF_DIR/Cargo.toml" ]; then die "--build needs install.sh inside a checkout"; fi
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs), or pass --binary FILE"
  say "Building BZZZ (cargo build --release; a few minutes the first time)"
  (cd "$SELF_DIR" && cargo build --release --locked -p bzzz) >&2 || die "cargo build failed"
  BINARY=$SELF_DIR/target/release/bzzz
fi
[ -f "$BINARY" ] || die "binary not found: $BINARY"
if [ -n "$SHA256" ]; then
  NEW_SHA=$(sha256_of "$BINARY")
  if [ "$NEW_SHA" != "$SHA256" ]; then
    echo "install.sh: error: checksum mismatch for $BINARY: expected $SHA256, got $NEW_SHA" >&2
    exit 4
  fi
fi
"$BINARY" --version >/dev/null 2>&1 || die "$BINARY does not run on this machine (wrong architecture?)"

confirm "Install BZZZ into ${PREFIX:-system paths} (HTTP port $HTTP_PORT, P2P port $P2P_PORT)?"

CHANGED=0
umask 022
mkdir -p "$BIN_DIR" "$ETC_DIR" "$LOG_DIR" "$RUN_DIR"
mkdir -p "$DATA_DIR" && chmod 700 "$DATA_DIR"

# (cmp, not a checksum: hashing 30+ MB costs a fifth of a second.)
if ! cmp -s "$BINARY" "$BIN_DIR/bzzz" 2>/dev/null; then
  cp "$BINARY" "$BIN_DIR/.bzzz.new" && chmod 755 "$BIN_DIR/.bzzz.new"
  mv -f "$BIN_DIR/.bzzz.new" "$BIN_DIR/bzzz"
  CHANGED=1; say "installed $BIN_DIR/bzzz"
fi

# Writes $2 to $1 only when it differs (keeps re-runs from restarting the node).
put() {
  if [ ! -f "$1" ] || ! printf '%s\n' "$2" | cmp -s - "$1"; then
    printf '%s\n' "$2" >"$1.new" && mv -f "$1.new" "$1"
    CHANGED=1; say "wrote $1"
  fi
}

boot_yaml='  bootstrap: []'
if [ -n "$BOOTSTRAP" ]; then
  boot_yaml='  bootstrap:'
  old_ifs=$IFS; IFS=,
  for b in $BOOTSTRAP; do
    case $b in /*) ;; *) die "--bootstrap must be a multiaddr such as /ip4/10.0.0.5/tcp/4140/p2p/12D3KooW… (got '$b')" ;; esac
    case $b in *[!A-Za-z0-9/._:-]*) die "--bootstrap contains unexpected characters: '$b'" ;; esac
    boot_yaml="$boot_yaml
    - $b"
  done
  IFS=$old_ifs
fi
put "$CONFIG" "# Written by install.sh; re-running it rewrites this file.
data_dir: $DATA_DIR
http: 0.0.0.0:$HTTP_PORT
network:
  listen:
    - /ip4/0.0.0.0/tcp/$P2P_PORT
    - /ip4/0.0.0.0/udp/$P2P_PORT/quic-v1
$boot_yaml
  mdns: $MDNS"

if [ -n "$_bzzz_join_token" ]; then
  if [ ! -f "$TOKEN" ] || ! printf '%s\n' "$_bzzz_join_token" | cmp -s - "$TOKEN"; then
    (umask 077 && printf '%s\n' "$_bzzz_join_token" >"$TOKEN")
    CHANGED=1; say "wrote $TOKEN"
  fi
  chmod 600 "$TOKEN"
elif [ -n "$JOIN_TOKEN_FILE" ]; then
  [ -r "$JOIN_TOKEN_FILE" ] || die "cannot read --join-token-file $JOIN_TOKEN_FILE"
  if [ "$JOIN_TOKEN_FILE" != "$TOKEN" ] && ! cmp -s "$JOIN_TOKEN_FILE" "$TOKEN" 2>/dev/null; then
    (umask 077 && cp "$JOIN_TOKEN_FILE" "$TOKEN")
    # A running node that has not joined must restart to use it.
    CHANGED=1; say "wrote $TOKEN"
  fi
  chmod 600 "$TOKEN"
fi

# The start script: the join token is passed only while it exists (the
# node keeps its membership after joining; the token can be deleted).
put "$BIN_DIR/bzzz-start" "#!/bin/sh
# Written by install.sh: starts the BZZZ node in the foreground.
set -- node run --config '$CONFIG'
if [ -f '$TOKEN' ]; then set -- \"\$@\" --join-token-file '$TOKEN'; fi
exec '$BIN_DIR/bzzz' \"\$@\""
chmod 755 "$BIN_DIR/bzzz-start"

if [ "$SERVICE" = systemd ]; then
  put "$UNIT_FILE" "[Unit]
Description=BZZZ node
Documentation=https://example.invalid/bzzz
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$BIN_DIR/bzzz-start
Restart=on-failure
RestartSec=2
TimeoutStopSec=20
KillMode=mixed
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=no
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
ReadWritePaths=$DATA_DIR $LOG_DIR $RUN_DIR $ETC_DIR
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target"
  systemctl daemon-reload
  systemctl enable "$UNIT_NAME" >/dev/null 2>&1 || true
else
  # Fallback supervisor: pid file, detached process, log file.
  put "$BIN_DIR/bzzz-service" "#!/bin/sh
# Written by install.sh: start|stop|restart|status for systems without systemd.
# (Not started at boot: add '$BIN_DIR/bzzz-service start' to your init scripts.)
PIDFILE='$PIDFILE'
LOG='$LOGFILE'
alive() { [ -f \"\$PIDFILE\" ] && kill -0 \"\$(cat \"\$PIDFILE\")\" 2>/dev/null; }
case \${1:-} in
  start)
    if alive; then echo \"bzzz is running (pid \$(cat \"\$PIDFILE\"))\"; exit 0; fi
    mkdir -p \"\$(dirname \"\$PIDFILE\")\" \"\$(dirname \"\$LOG\")\"
    if command -v setsid >/dev/null 2>&1; then
      setsid '$BIN_DIR/bzzz-start' </dev/null >>\"\$LOG\" 2>&1 &
    else
      nohup '$BIN_DIR/bzzz-start' </dev/null >>\"\$LOG\" 2>&1 &
    fi
    echo \$! >\"\$PIDFILE\"
    echo \"bzzz started (pid \$!)\" ;;
  stop)
    if alive; then
      pid=\$(cat \"\$PIDFILE\"); kill \"\$pid\"
      i=0; while kill -0 \"\$pid\" 2>/dev/null && [ \$i -lt 200 ]; do sleep 0.1; i=\$((i + 1)); done
      kill -9 \"\$pid\" 2>/dev/null || true
    fi
    rm -f \"\$PIDFILE\"; echo 'bzzz stopped' ;;
  restart) \"\$0\" stop; \"\$0\" start ;;
  status) if alive; then echo \"bzzz is running (pid \$(cat \"\$PIDFILE\"))\"; else echo 'bzzz is not running'; exit 3; fi ;;
  *) echo \"usage: \$0 start|stop|restart|status\" >&2; exit 1 ;;
esac"
  chmod 755 "$BIN_DIR/bzzz-service"
fi

[ "$START" = 1 ] || { say "Installed (not started: --no-start)."; exit 0; }

pid=$(running_pid || true)
if [ -n "$pid" ] && [ "$CHANGED" = 0 ]; then
  say "BZZZ is already installed and running (pid $pid); nothing changed."
else
  if [ -n "$pid" ]; then stop_node; fi
  if [ "$SERVICE" = systemd ]; then systemctl restart "$UNIT_NAME"; else "$BIN_DIR/bzzz-service" start >/dev/null; fi
fi
fact changed "$CHANGED"

# Wait for the API, then report the node id and the setup URL.
# (The node writes node.json, with its pid, once it listens: P2P and API.)
i=0; id=
while [ "$i" -lt $((START_TIMEOUT * 20)) ]; do
  pid=$(running_pid || true)
  id=$(node_id_of "$pid")
  [ -n "$id" ] && break
  if [ -z "$pid" ] && [ "$i" -gt 20 ]; then break; fi
  sleep 0.05; i=$((i + 1))
done
if [ -z "$id" ]; then
  echo "install.sh: the node did not start; the last lines of its log:" >&2
  if [ "$SERVICE" = systemd ]; then journalctl -u "$UNIT_NAME" -n 20 --no-pager >&2 2>/dev/null || true
  else tail -n 20 "$LOGFILE" >&2 2>/dev/null || true; fi
  exit 3
fi
fact node_id "$id"
host=$(hostname 2>/dev/null || echo localhost)
say "BZZZ node $id is running."
say "Open http://$host:$HTTP_PORT/setup to create a cluster (or it joins with its token)."
fact setup_url "http://$host:$HTTP_PORT/setup"
