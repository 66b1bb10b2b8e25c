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
# Prometheus (prometheus, promtool) for the rule unit tests and the real-Prometheus test,
# systemd-analyze for the unit file, and the openssl CLI for the TLS end-to-end tests
# (certificates, s_client). Under CI=true a missing tool fails the run (the
# tests themselves fail rather than skip there too); elsewhere it is a warning.
missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]} > 0)); then
    step="install ${missing[*]}"
    printf '\n==> %s\n' "$step"
    sudo=()
    [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && sudo=(sudo)
    if ! { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$work/apt.log" 2>&1; then
        tail -n 20 "$work/apt.log" >&2
        if [[ ${CI:-} == true ]]; then
            echo "error: could not install ${missing[*]} and CI=true" >&2
            exit 1
        fi
        echo "warning: could not install ${missing[*]}; the tests that need them skip" >&2
    fi
fi

# --- static checks
run "cargo fmt" cargo fmt --all --check
run "cargo fmt (fuzz)" cargo fmt --manifest-path fuzz/Cargo.toml --check
run "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings -D clippy::await_holding_lock
run "cargo clippy (fuzz)" cargo clippy --manifest-path fuzz/Cargo.toml --quiet -- -D warnings

# --- tests
# The e2e tests run the daemon binary: build it here, visibly, rather than inside the first
# test that needs it (which would sit silent while it compiles).
run "cargo build (daemon)" cargo build -p svc-overlay --bin svc-overlay
if command -v promtool >/dev/null 2>&1; then
    run "promtool test rules" promtool test rules deploy/prometheus/tests/*.yml
fi
step="cargo test"
rm -f target/prometheus-timeline.txt
printf '\n==> %s\n' "$step"
cargo test --workspace 2>&1 | tee "$work/test.log"
tests=$(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$work/test.log")
if [[ -f target/prometheus-timeline.txt ]]; then
    echo "real Prometheus, OverlayReadyDegraded on a saturated node:"
    cat target/prometheus-timeline.txt
fi

# --- the otel feature: OTLP export of the spans (off by default, so built on its own).
step="otel"
printf '\n==> %s\n' "$step"
cargo clippy -p svc-overlay --features otel --all-targets --quiet -- -D warnings
cargo test -p svc-overlay --features otel --test otel 2>&1 | tee "$work/otel.log"
tests=$((tests + $(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$work/otel.log")))

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
