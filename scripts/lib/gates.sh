# Gates that keep the exit status of what they run, whatever its output goes through.
# Sourced by scripts/test, scripts/chaos, scripts/fuzz, scripts/bench, scripts/run and friends;
# scripts/check-gates feeds each one a failing command and expects it to fail.
#
# `SWIFT` names the swift driver (default `swift`): the gate checks put a stand-in there.

# filtered PATTERN COMMAND...: runs COMMAND with its standard output and error merged, shows only
# the lines matching the extended regular expression PATTERN (as they come), and returns
# COMMAND's own exit status: a filter that matches nothing never turns a failure into a success.
filtered() {
    local pattern=$1
    shift
    # The subshell's pipefail makes the pipeline's status the command's: the filter always succeeds.
    (
        set -o pipefail
        "$@" 2>&1 | { grep --line-buffered -E -- "$pattern" || true; }
    )
}

# swift_build LABEL ARGS...: `swift build ARGS...`, showing errors, warnings and the end line;
# on a failed build says so (naming LABEL) and returns the build's status. Binaries of an earlier
# build are never used after a failed one: callers stop on the status.
swift_build() {
    local label=$1 status=0
    shift
    # This project's warnings and every error; a dependency's warnings are its own (SwiftPM repeats
    # swift-distributed-tracing's unhandled file on every build).
    filtered "error|^$PWD/(Sources|Tests)/.*warning:|Build complete" "${SWIFT:-swift}" build "$@" || status=$?
    if [ "$status" -ne 0 ]; then echo "$label: swift build $* failed (exit $status)" >&2; fi
    return "$status"
}

# swift_build_tests_checked: builds everything with the tests, fails on a failed build and on a
# warning in this project's own code (Sources/ and Tests/; dependencies' warnings are theirs).
swift_build_tests_checked() {
    local log status=0 own_warnings
    log=$(mktemp)
    filtered "error|warning:|Build complete" tee_to "$log" "${SWIFT:-swift}" build --build-tests || status=$?
    if [ "$status" -ne 0 ]; then
        rm -f "$log"
        echo "test: build failed (exit $status)" >&2
        return "$status"
    fi
    own_warnings=$(grep -E "^$PWD/(Sources|Tests)/.*warning:" "$log" | sort -u || true)
    rm -f "$log"
    if [ -n "$own_warnings" ]; then
        echo "$own_warnings" >&2
        echo "test: the build has warnings in this project's code" >&2
        return 1
    fi
}

# tee_to FILE COMMAND...: runs COMMAND, copying its merged output into FILE; COMMAND's status.
tee_to() {
    local file=$1
    shift
    (
        set -o pipefail
        "$@" 2>&1 | tee "$file"
    )
}
