#!/bin/sh
# Regenerate the CCSDS fixtures in internal/framing/ccsds/testdata from
# gr-satellites (Debian) and @serialport/parser-spacepacket (npm). Not a CI
# step: the outputs are committed. Needs apt-get, dpkg, Debian's python3 and
# Node 20 with npm. Run from the repository root:
#
#	sh internal/framing/ccsds/testdata/gen/gen.sh
set -eu
GR_SATELLITES=4.4.0-2+b7
CONSTRUCT=2.10.68+dfsg1-2
SPACEPACKET=13.0.0

here=$(cd "$(dirname "$0")" && pwd)
out=$(dirname "$here")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && apt-get download "gr-satellites=$GR_SATELLITES" "python3-construct=$CONSTRUCT")
dpkg -x "$tmp"/gr-satellites_*.deb "$tmp/root"
dpkg -x "$tmp"/python3-construct_*.deb "$tmp/root"
/usr/bin/python3 "$here/gen.py" "$tmp/root/usr/lib/python3/dist-packages" "$out"

(cd "$tmp" && npm init -y >/dev/null && npm install --no-audit --no-fund "@serialport/parser-spacepacket@$SPACEPACKET" >/dev/null)
NODE_PATH="$tmp/node_modules" node "$here/split.js" "$out"
