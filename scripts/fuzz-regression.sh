#!/usr/bin/env bash
# Fuzz regression: builds every cargo-fuzz target in fuzz/ without sanitizers (`-s none`,
# the only build this stable toolchain can make) and runs each once over its committed corpus
# (fuzz/corpus/TARGET, -runs=0: each input once, no mutation, nothing written). Exits non-zero
# if any input crashes a target (a panic is a crash).
#
# Needs cargo-fuzz: `cargo install cargo-fuzz --locked`.
# A longer, mutating run of one target (new inputs go to a scratch corpus, not the committed one):
#   cargo fuzz run -s none TARGET /tmp/corpus-TARGET fuzz/corpus/TARGET -- -max_total_time=600
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-regression: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
    exit 2
fi

cargo fuzz build -s none
failed=()
for target in $(cargo fuzz list); do
    corpus="corpus/$target"
    if [ ! -d "$corpus" ]; then
        echo "fuzz-regression: $target has no corpus at fuzz/$corpus" >&2
        failed+=("$target")
        continue
    fi
    echo "fuzz-regression: $target over $(find "$corpus" -type f | wc -l) inputs"
    if ! cargo fuzz run -s none "$target" "$corpus" -- -runs=0; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-regression: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-regression: every target passed its corpus"
