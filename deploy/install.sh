#!/usr/bin/env bash
# Install, upgrade or remove edge-agent on Raspberry Pi OS / Debian (arm64, armhf, x86_64). Idempotent.
#
#   sudo deploy/install.sh [OPTIONS] [WHEEL | CHECKOUT_DIR]     install or upgrade (default: this checkout)
#   sudo deploy/install.sh --uninstall [--purge]                remove (keeps config and state unless --purge)
#
# Options:
#   --root DIR        staging: install everything under DIR (venv DIR/opt/edge-agent, unit DIR/etc/systemd/system,
#                     config DIR/etc/edge-agent) and only print what would be done with useradd, chown, apt-get
#                     and systemctl. For CI and image checks; the venv in DIR only works at that path.
#   --pip-args ARGS   extra pip arguments, e.g. "--no-deps" or "--find-links /srv/wheels" (also $EDGE_AGENT_PIP_ARGS)
#   --python PATH     interpreter for the venv (default /usr/bin/python3; also $EDGE_AGENT_PYTHON)
#   --no-start        install but do not enable or (re)start the service
#   --uninstall       stop, disable and remove the service and the venv
#   --purge           with --uninstall: also remove /etc/edge-agent, /var/lib/edge-agent and the user
#
# Layout: /opt/edge-agent (venv; wheels installed so far in /opt/edge-agent/dist for rollback),
# /etc/systemd/system/edge-agent.service, /etc/edge-agent/agent.env (written from the example only when absent),
# /etc/edge-agent/credentials/mqtt-password (LoadCredential=; created empty when absent), /var/lib/edge-agent (state).
set -euo pipefail

APP=edge-agent
SERVICE_USER=edge-agent
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

root=""
pip_args="${EDGE_AGENT_PIP_ARGS:-}"
python="${EDGE_AGENT_PYTHON:-/usr/bin/python3}"
start=1
uninstall=0
purge=0
source_pkg=""

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) [[ $# -ge 2 ]] || die "--root needs a directory"; root="$2"; shift 2 ;;
        --root=*) root="${1#--root=}"; shift ;;
        --pip-args) [[ $# -ge 2 ]] || die "--pip-args needs a value"; pip_args="$2"; shift 2 ;;
        --pip-args=*) pip_args="${1#--pip-args=}"; shift ;;
        --python) [[ $# -ge 2 ]] || die "--python needs a path"; python="$2"; shift 2 ;;
        --python=*) python="${1#--python=}"; shift ;;
        --no-start) start=0; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [[ -z "$source_pkg" ]] || die "only one WHEEL or CHECKOUT_DIR"; source_pkg="$1"; shift ;;
    esac
done
[[ $purge -eq 0 || $uninstall -eq 1 ]] || die "--purge only goes with --uninstall"

if [[ -n "$root" ]]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
    [[ "$root" != "/" ]] || root=""
fi
staging=0
[[ -z "$root" ]] || staging=1

venv="$root/opt/$APP"
unit_dir="$root/etc/systemd/system"
unit="$unit_dir/$APP.service"
etc="$root/etc/$APP"
env_file="$etc/agent.env"
cred_dir="$etc/credentials"
state="$root/var/lib/$APP"

# Privileged steps: done for real, or only printed in staging mode.
run() {
    if [[ $staging -eq 1 ]]; then
        say "would run: $(printf "%q " "$@")"
    else
        "$@"
    fi
}

systemd_running() {
    # sd_booted(3): systemd is PID 1 when /run/systemd/system exists.
    [[ $staging -eq 0 && -d /run/systemd/system ]]
}

systemctl_or_say() {
    if systemd_running; then
        systemctl "$@"
    else
        say "systemd is not running here: would run: systemctl $*"
    fi
}

if [[ $staging -eq 0 && $EUID -ne 0 ]]; then
    die "run as root (sudo $0 ...), or use --root DIR to stage without root"
fi

# ---------------------------------------------------------------------------------------------- uninstall
if [[ $uninstall -eq 1 ]]; then
    if [[ -f "$unit" ]]; then
        systemctl_or_say disable --now "$APP.service"
    fi
    rm -f "$unit"
    systemctl_or_say daemon-reload
    rm -rf "$venv"
    say "removed $unit and $venv"
    if [[ $purge -eq 1 ]]; then
        rm -rf "$etc" "$state"
        say "purged $etc and $state"
        if id "$SERVICE_USER" >/dev/null 2>&1 || [[ $staging -eq 1 ]]; then
            run userdel "$SERVICE_USER"
        fi
    else
        say "kept configuration in $etc and state in $state (--purge removes them)"
    fi
    exit 0
fi

# ---------------------------------------------------------------------------------------------- install
unit_src="$repo/systemd/$APP.service"
example_src="$here/agent.env.example"
[[ -f "$unit_src" ]] || die "missing $unit_src: run this script from an edge-agent checkout or release tarball"
[[ -f "$example_src" ]] || die "missing $example_src"

if [[ -z "$source_pkg" ]]; then
    source_pkg="$repo"
fi
if [[ -d "$source_pkg" ]]; then
    [[ -f "$source_pkg/pyproject.toml" ]] || die "$source_pkg has no pyproject.toml"
elif [[ -f "$source_pkg" ]]; then
    [[ "$source_pkg" == *.whl ]] || die "$source_pkg is not a wheel (.whl)"
else
    die "no such wheel or directory: $source_pkg"
fi
source_pkg="$(cd "$(dirname "$source_pkg")" && pwd)/$(basename "$source_pkg")"

arch="$(uname -m)"
case "$arch" in
    aarch64|arm64|x86_64|armv7l) ;;
    *) say "warning: untested architecture $arch (tested: aarch64, armv7l, x86_64)" ;;
esac

# The venv module: Raspberry Pi OS and Debian ship it separately (python3-venv).
if [[ ! -x "$python" ]]; then
    python="$(command -v python3 || true)"
    [[ -n "$python" ]] || die "python3 not found (apt-get install python3)"
fi
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$python is $("$python" -V 2>&1); edge-agent needs Python >= 3.11 (Raspberry Pi OS / Debian 12 or later)"
if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [[ $staging -eq 1 ]]; then
        die "$python lacks the venv module (on the target: apt-get install python3-venv)"
    fi
    say "installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv \
        || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; }
fi

# The service user: system account, no login, no home of its own; serial ports are group dialout.
if id "$SERVICE_USER" >/dev/null 2>&1; then
    if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx dialout; then
        run usermod -a -G dialout "$SERVICE_USER"
    fi
else
    run useradd --system --user-group --groups dialout --no-create-home --home-dir "/var/lib/$APP" \
        --shell /usr/sbin/nologin --comment "edge-agent daemon" "$SERVICE_USER"
fi

# The virtualenv. A broken one (e.g. the system Python was upgraded under it) is recreated.
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating virtualenv $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2206  # pip_args is a list of words on purpose
pip_extra=($pip_args)
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)

if [[ -d "$source_pkg" ]]; then
    say "building a wheel from $source_pkg"
    "${pip[@]}" wheel --quiet --no-deps "${pip_extra[@]}" --wheel-dir "$work" "$source_pkg"
    wheel="$(ls "$work"/*.whl)"
else
    wheel="$source_pkg"
fi
say "installing $(basename "$wheel") into $venv"
# Dependencies first, then the package itself forced, so a rebuilt wheel of the same version (or an older one,
# for a rollback) replaces what is there.
"${pip[@]}" install --quiet "${pip_extra[@]}" "$wheel"
"${pip[@]}" install --quiet --no-deps --force-reinstall "${pip_extra[@]}" "$wheel"
mkdir -p "$venv/dist"
if [[ "$(dirname "$wheel")" != "$venv/dist" ]]; then
    cp -f "$wheel" "$venv/dist/"
fi
version="$("$venv/bin/python" -c 'import agent; print(agent.__version__)')"

# The unit: always replaced (local changes belong in a drop-in: systemctl edit edge-agent).
install -d -m 0755 "$unit_dir"
unit_changed=1
if [[ -f "$unit" ]] && cmp -s "$unit_src" "$unit"; then
    unit_changed=0
fi
install -m 0644 "$unit_src" "$unit"

# Configuration: the example is refreshed on every install; agent.env is written only when absent.
install -d -m 0750 "$etc"
run chown "root:$SERVICE_USER" "$etc"
install -m 0644 "$example_src" "$etc/agent.env.example"
[[ -f "$here/agent.toml.example" ]] && install -m 0644 "$here/agent.toml.example" "$etc/agent.toml.example"
if [[ -e "$env_file" ]]; then
    say "kept existing $env_file (new settings: see $etc/agent.env.example)"
else
    install -m 0640 "$example_src" "$env_file"
    run chown "root:$SERVICE_USER" "$env_file"
    say "wrote $env_file from the example: edit it, then systemctl restart $APP"
fi
# LoadCredential= fails the start when its file is missing: an empty password means none (anonymous).
install -d -m 0700 "$cred_dir"
if [[ ! -e "$cred_dir/mqtt-password" ]]; then
    install -m 0600 /dev/null "$cred_dir/mqtt-password"
fi
chmod 0600 "$cred_dir/mqtt-password"

say "installed $APP $version ($arch) in $venv"

# The service.
if [[ $start -eq 0 ]]; then
    say "--no-start: not enabling or starting $APP.service"
elif systemd_running; then
    systemctl daemon-reload
    systemctl enable "$APP.service"
    # restart, not start: an upgrade must replace the running process (on a fresh install it simply starts).
    systemctl restart "$APP.service"
    systemctl --no-pager --lines=0 status "$APP.service" || true
    say "running; logs: journalctl -u $APP -f"
else
    say "systemd is not running here: would run: systemctl daemon-reload"
    say "systemd is not running here: would run: systemctl enable --now $APP.service (restart when upgrading)"
fi
[[ $unit_changed -eq 0 ]] || say "unit file updated: $unit"
