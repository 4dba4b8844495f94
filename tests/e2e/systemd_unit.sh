#!/bin/bash
# The systemd unit in the tree parses and names a program that exists
# (systemd-analyze verify, with ExecStart pointed at the built sluiced).
# Usage: systemd_unit.sh UNIT SLUICED WORKDIR. Exit 77 without systemd-analyze.
set -uo pipefail
UNIT=$1 SLUICED=$2 WORK=$3
command -v systemd-analyze >/dev/null || { echo "no systemd-analyze: skipped"; exit 77; }
mkdir -p "$WORK"
sed -e "s|^ExecStart=/usr/local/bin/sluiced|ExecStart=$SLUICED|" \
    -e "s|^ExecReload=/usr/local/bin/sluicectl|ExecReload=$(dirname "$SLUICED")/sluicectl|" "$UNIT" > "$WORK/sluiced.service"
grep -q "^ExecStart=$SLUICED " "$WORK/sluiced.service" || { echo "ExecStart line not found"; exit 1; }
out=$(systemd-analyze verify "$WORK/sluiced.service" 2>&1); rc=$?
echo "$out"
[ $rc -eq 0 ] && ! grep -qiE 'unknown|invalid|failed' <<<"$out"
