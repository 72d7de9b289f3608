#!/bin/sh
# Bootstrap a fresh Debian machine (as root): Debian packages the tests need,
# then .venv with the package and its test extras. Idempotent and quick when
# everything is already present.
set -eu
cd "$(dirname "$0")/.."

# Debian packages: command -> package
NEED=""
check() { command -v "$1" >/dev/null 2>&1 || NEED="$NEED $2"; }
check nft nftables
check ip iproute2
check tcpdump tcpdump
check iperf3 iperf3
check ping iputils-ping
check swanctl strongswan-swanctl
[ -x /usr/lib/ipsec/charon ] || NEED="$NEED strongswan-charon"
dpkg -s libcharon-extra-plugins >/dev/null 2>&1 || NEED="$NEED libcharon-extra-plugins"
dpkg -s libstrongswan-standard-plugins >/dev/null 2>&1 || NEED="$NEED libstrongswan-standard-plugins"
dpkg -s libstrongswan-extra-plugins >/dev/null 2>&1 || NEED="$NEED libstrongswan-extra-plugins"
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || NEED="$NEED postgresql"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || NEED="$NEED python3-venv"

if [ -n "$NEED" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: missing Debian packages:$NEED (run as root)" >&2
        exit 1
    fi
    echo "bootstrap: apt-get install$NEED"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # strongSwan's charon must not start on its own: we run it per namespace.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    apt-get install -y -qq --no-install-recommends $NEED >/dev/null
    rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
STAMP=.venv/.pyipsec-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
    touch "$STAMP"
fi
