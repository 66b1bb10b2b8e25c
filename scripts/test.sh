#!/usr/bin/env bash
# The one test command: formatting, lints, every test in the workspace, and a fuzz smoke run
# of each target. Installs what it needs when it is missing, so a fresh machine passes too.
#
#   FUZZ_SECONDS=N   seconds per fuzz target (default 60; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TARGETS=(frame_decoder chunk_reassembly)
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"

started=$SECONDS
step=setup
work=$(mktemp -d)
finish() {
    local rc=$?
    rm -rf "$work"
    if ((rc != 0)); then
        echo "test.sh: FAILED at step '$step' (exit $rc) after $((SECONDS - started))s" >&2
    fi
}
trap finish EXIT

run() {
    step=$1
    shift
    printf '\n==> %s\n' "$step"
    "$@"
}

# --- tools (each step only when its tool is missing, and quiet when it runs)
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    run "install rustfmt clippy" rustup --quiet component add rustfmt clippy
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    run "install cargo-fuzz" cargo install cargo-fuzz --locked --quiet
fi
if ! command -v promtool >/dev/null 2>&1; then
    # The metrics and alert-rule tests run promtool. Locally a missing promtool is a warning
    # (those tests skip with a notice); under CI=true it fails the run here, and the tests
    # themselves fail too, so CI never passes without them.
    step="install promtool"
    printf '\n==> %s\n' "$step"
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends prometheus; } >"$work/apt.log" 2>&1 ||
            tail -n 20 "$work/apt.log" >&2
    fi
    if ! command -v promtool >/dev/null 2>&1; then
        if [[ ${CI:-} == true || ${CI:-} == 1 ]]; then
            echo "error: promtool is required under CI=true (install Debian's prometheus package as root)" >&2
            exit 1
        fi
        echo "warning: promtool not installed (needs root and apt-get); the promtool checks will be skipped" >&2
    fi
fi

# --- static checks
run "cargo fmt" cargo fmt --all --check
run "cargo fmt (fuzz)" cargo fmt --manifest-path fuzz/Cargo.toml --check
run "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings -D clippy::await_holding_lock
run "cargo clippy (fuzz)" cargo clippy --manifest-path fuzz/Cargo.toml --quiet -- -D warnings

# --- tests
step="cargo test"
printf '\n==> %s\n' "$step"
cargo test --workspace 2>&1 | tee "$work/test.log"
tests=$(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$work/test.log")

# --- loom: the shared-memory primitives, model-checked. Its own target dir, since
# `--cfg loom` must reach only this build.
step="loom"
printf '\n==> %s\n' "$step"
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
    cargo test -p overlay-core --test loom --release 2>&1 | tee "$work/loom.log"
loom_tests=$(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$work/loom.log")
tests=$((tests + loom_tests))

# --- fuzz smoke runs: seeds copied into a scratch corpus so the committed seeds stay as
# they are; a crash, an input that passes the rss limit or a slow input fails the run.
fuzz_summary=""
if ((FUZZ_SECONDS > 0)); then
    run "cargo fuzz build" cargo fuzz build --sanitizer none
    for t in "${FUZZ_TARGETS[@]}"; do
        step="fuzz $t"
        printf '\n==> %s (%ss)\n' "$step" "$FUZZ_SECONDS"
        mkdir -p "$work/corpus/$t"
        cp fuzz/seeds/"$t"/* "$work/corpus/$t/"
        if ! cargo fuzz run "$t" "$work/corpus/$t" --sanitizer none -- \
            -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1 \
            >"$work/fuzz-$t.log" 2>&1; then
            tail -n 60 "$work/fuzz-$t.log" >&2
            exit 1
        fi
        execs=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$work/fuzz-$t.log")
        echo "$t: ${execs:-?} executions, no crash"
        fuzz_summary+=" $t=${execs:-?}"
    done
else
    fuzz_summary=" skipped (FUZZ_SECONDS=0)"
fi

step=done
echo
echo "test.sh: OK — fmt, clippy, $tests tests passed, fuzz executions:$fuzz_summary; $((SECONDS - started))s"
