# swift_test_limited MINUTES ARGS...: `swift test --skip-build ARGS...` with a time limit, so that
# a hung test fails the run within minutes instead of holding CI until its own limit. When the
# limit is hit it names the tests that started and never finished.
swift_test_limited() {
    local minutes=$1 log status
    shift
    log=$(mktemp)
    set +e
    # Line-buffered: piped, the test output would otherwise come in one block at the end, and a
    # killed run would leave nothing to tell which tests were still running.
    timeout --kill-after=30 "${minutes}m" stdbuf -oL -eL swift test --skip-build "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "test: swift test $* did not finish within $minutes minutes; still running:" >&2
        sed -e 's/\x1b\[[0-9;]*m//g' "$log" | python3 -c '
import re, sys
started, ended = [], set()
for line in sys.stdin:
    m = re.search(r"Test (.+?) started\.", line)
    if m: started.append(m.group(1))
    m = re.search(r"Test (.+?) (passed|failed|skipped)", line)
    if m: ended.add(m.group(1))
    m = re.search(r"Test (.+?) with \d+ test cases? (passed|failed)", line)
    if m: ended.add(m.group(1))
for name in started:
    if name not in ended: print("  " + name)
' >&2
    fi
    rm -f "$log"
    return "$status"
}
