# Helpers for scripts/services/*.sh, sourced by scripts/test (bash). Each service script installs
# its server (cached under $KEYHOLD_CACHE), starts it on a free 127.0.0.1 port with
# `service_start`, waits with `service_wait_port`, and exports the variables its tests read
# (KEYHOLD_TEST_*). A server that cannot start fails the whole run, loudly, with its log.

: "${KEYHOLD_CACHE:=$HOME/.cache/keyhold}"
KEYHOLD_SERVICES_DIR="${KEYHOLD_SERVICES_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/keyhold-services.XXXXXX")}"
export KEYHOLD_SERVICES_DIR
declare -a pids

service_log() { printf '    [%s] %s\n' "$1" "$2" >&2; }

service_fail() { # name message [logfile]
  printf '\nerror: test server %s: %s\n' "$1" "$2" >&2
  if [ -n "${3:-}" ] && [ -f "$3" ]; then
    printf -- '--- last lines of %s ---\n' "$3" >&2
    tail -n 40 "$3" >&2
  fi
  exit 1
}

# A TCP port nothing listens on now (the kernel picks it).
free_port() {
  python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

# service_wait_port NAME PORT SECONDS LOGFILE: wait until 127.0.0.1:PORT accepts connections.
service_wait_port() {
  local name=$1 port=$2 seconds=$3 log=$4 i
  for ((i = 0; i < seconds * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  service_fail "$name" "nothing listens on 127.0.0.1:$port after ${seconds}s" "$log"
}

# service_start NAME LOGFILE COMMAND...: run COMMAND in the background; stopped when the run ends.
service_start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  pids+=("$!")
  service_log "$name" "started (pid $!, log $log)"
}

# python_venv NAME PYTHON PACKAGE...: a virtualenv under $KEYHOLD_CACHE/venvs, made once per
# package list, then reused. Prints its bin directory.
python_venv() {
  local name=$1 python=$2
  shift 2
  local key dir
  key=$(printf '%s\n' "$python" "$@" | sha256sum | cut -c1-12)
  dir="$KEYHOLD_CACHE/venvs/$name-$key"
  if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    service_log "$name" "creating $dir (once)"
    "$python" -m venv "$dir" >&2 || service_fail "$name" "cannot create a venv with $python"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" >&2 ||
      service_fail "$name" "pip install $* failed"
    touch "$dir/.complete"
  fi
  printf '%s\n' "$dir/bin"
}

# A Python interpreter of at least the given minor version (3.N), from PATH or pyenv.
python_at_least() {
  local minor=$1 candidate
  for candidate in python3 "$HOME"/.pyenv/versions/3.*/bin/python3; do
    [ -x "$(command -v "$candidate" 2>/dev/null)" ] || continue
    if "$candidate" -c "import sys; sys.exit(0 if sys.version_info >= (3, $minor) else 1)" 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# apt_install PACKAGE...: install Debian packages that are missing (as root, or with sudo).
apt_install() {
  local missing=() p
  for p in "$@"; do
    # `dpkg -s` also succeeds for packages removed but not purged: ask for the installed state.
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  service_log apt "installing ${missing[*]}"
  $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
    service_fail apt "cannot install ${missing[*]}"
}
