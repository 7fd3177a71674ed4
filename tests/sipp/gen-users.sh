#!/usr/bin/env bash
# Regenerates users.csv, the sipp injection file of the real-peer suite and the benchmark:
# N users (default 5000) user0001@contoso.com ... in sipp's "field0;field1;" format, read in
# order (SEQUENTIAL) so that `-m N` registers each user exactly once.
#   tests/sipp/gen-users.sh [N] > tests/sipp/users.csv
set -euo pipefail
n=${1:-5000}
echo SEQUENTIAL
for ((i = 1; i <= n; i++)); do
    printf 'user%04d;contoso.com;\n' "$i"
done
