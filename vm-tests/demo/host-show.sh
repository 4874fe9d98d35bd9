#!/usr/bin/env bash
# The host half of the demo: shows what the guest wrote, as the host sees it.
set -euo pipefail
share=$1
echo "DEMO-HOST the host reads from-guest.txt: $(cat "$share/from-guest.txt")"
