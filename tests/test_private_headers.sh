#!/usr/bin/env bash
# test_private_headers: a module's private headers stay inside it.
#
# A private header (queue_int.h, nn_model_int.h, worker_mop.h, ...) opens
# with "#ifndef CDS_<MOD>_INTERNAL / #error ...", and only that module's
# meson.build defines the macro (for its own sources; white-box tests take
# <mod>_private_args).  This test proves both halves from the outside:
#   1. every *_int.h of every module is guarded that way;
#   2. each guarded header, included by a file that is not in its module
#      (compiled as the other modules' sources are, without the macro), fails
#      to compile with the message naming the public header to use;
#   3. with the macro, it compiles (the guard is not simply broken);
#   4. no source outside tests/ and the module includes one.
# Arguments: SOURCE_ROOT (default: the directory above this script).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/tap.sh"
root=${1:-$(dirname "$here")}
cd "$root" || exit 1

cc=${CC:-cc}
incs=(-Icommon -Iqueue -Ietl -Inn -Iworker -Iddp -Itools -I/usr/include/hiredis -I/usr/include/postgresql
      -I/usr/include/x86_64-linux-gnu/openblas-pthread -D_GNU_SOURCE -std=c17)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mapfile -t guarded < <(grep -l '^#error ".* is private to ' common/*.h queue/*.h etl/*.h nn/*.h worker/*.h ddp/*.h 2>/dev/null)
mapfile -t ints < <(ls common/*_int.h queue/*_int.h etl/*_int.h nn/*_int.h worker/*_int.h ddp/*_int.h 2>/dev/null)

missing=""
for h in "${ints[@]}"; do
    grep -q '^#error ".* is private to ' "$h" || missing="$missing $h"
done
is "${missing# }" "" "every *_int.h (${#ints[@]} of them) is guarded"
ok $([ "${#guarded[@]}" -ge "${#ints[@]}" ] && [ "${#ints[@]}" -ge 6 ]; echo $?) \
    "${#guarded[@]} guarded private headers found"

for h in "${guarded[@]}"; do
    mod=$(dirname "$h")
    base=$(basename "$h")
    macro=CDS_$(echo "$mod" | tr a-z A-Z)_INTERNAL
    printf '#include "%s"\nint main(void) { return 0; }\n' "$base" >"$tmp/outside.c"
    out=$("$cc" -fsyntax-only "${incs[@]}" "$tmp/outside.c" 2>&1)
    rc=$?
    ok $([ $rc -ne 0 ] && grep -q "$base is private to $mod/: include " <<<"$out"; echo $?) \
        "$h refused outside $mod/"
    out=$("$cc" -fsyntax-only "-D$macro" "${incs[@]}" "$tmp/outside.c" 2>&1)
    ok $? "$h compiles with $macro"
    [ -n "$out" ] && echo "$out" | head -5 | sed 's/^/#   /'
done

# Sources outside the module (and outside tests/) that include one.
leaks=""
for h in "${guarded[@]}"; do
    mod=$(dirname "$h")
    base=$(basename "$h")
    while IFS= read -r f; do
        case "$f" in "$mod"/* | tests/*) ;; *) leaks="$leaks $f:$base" ;; esac
    done < <(grep -rl --include='*.c' --include='*.h' --include='*.cu' "#include \"$base\"" \
                common queue etl nn worker tools bench ddp jobs 2>/dev/null)
done
is "${leaks# }" "" "no file outside a module includes its private headers"

tap_done
