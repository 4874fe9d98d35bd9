#!/usr/bin/env bash
# Cheap structural checks from STYLE.md: unsafe only in the listed files, layers import only
# what they may, and no file grows past the hard size limit.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0

listed=$(sort ci/unsafe-files.txt)
actual=$(grep -rl '^#!\[allow(unsafe_code)\]' src | sort)
if [[ "$listed" != "$actual" ]]; then
    echo "unsafe files differ from ci/unsafe-files.txt:"; diff <(echo "$listed") <(echo "$actual") || true
    fail=1
fi
if grep -rn '#\[allow(unsafe_code)\]' src; then
    echo "item-level allow(unsafe_code) outside the listed files"; fail=1
fi

forbid() { # dir pattern why
    if grep -rnE "$2" "$1" --include='*.rs'; then echo "layering: $3"; fail=1; fi
}
forbid src/fuse 'crate::(device|fs::passthrough|sandbox)|vhost(_user_backend)?::' "fuse/ must not use device, passthrough or vhost"
forbid src/fs 'crate::(fuse|device)|vhost' "fs/ must not use fuse, device or vhost"
forbid src/device 'fs::passthrough' "device/ must not use passthrough internals"
forbid src/cli.rs 'crate::' "cli.rs must not use other modules"
forbid src/sandbox 'crate::(fuse|fs|dax|device|cli)' "sandbox/ must not use other modules"
forbid src/guard 'crate::(fuse|fs|dax|device|cli|sandbox)' "guard/ must not use other modules"
forbid src/log_limit.rs 'crate::(fuse|fs|dax|device|cli|sandbox)' "log_limit.rs is a leaf"

while read -r f; do
    n=$(wc -l < "$f")
    if [[ $f != src/fuse/abi.rs && $n -gt 1000 ]]; then echo "$f has $n lines (limit 1000)"; fail=1; fi
done < <(find src -name '*.rs')

exit $fail
