# tap.sh: the TAP helpers every shell test sources (tests/README.md).
#
#   . "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
#   ok STATUS NAME      "ok N - NAME" when STATUS is 0, else "not ok N - NAME"
#   is GOT WANT NAME    ok when the two strings are equal; prints both if not
#   tap_done            prints the plan "1..N" last and returns 1 if any failed:
#                       make it the test's last command (its exit status)
#
# n (tests so far) and failed (how many failed) are plain variables, so a
# test may read them (to print workers' logs after a failure, say).
n=0
failed=0

ok() {
    n=$((n + 1))
    if [ "$1" = 0 ]; then
        echo "ok $n - $2"
    else
        echo "not ok $n - $2"
        failed=$((failed + 1))
    fi
}

is() { # GOT WANT NAME
    if [ "$1" = "$2" ]; then ok 0 "$3"; else ok 1 "$3"; echo "#   got '$1', want '$2'"; fi
}

tap_done() {
    echo "1..$n"
    [ "$failed" -eq 0 ]
}
