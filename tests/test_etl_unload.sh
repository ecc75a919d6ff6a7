#!/usr/bin/env bash
# ETL against the real PostgreSQL of scripts/with-services: every feature
# source and label form, checked value by value with numpy; bad input refused
# with one line and no shard left behind; a backend killed mid-unload; a full
# disk.  usage: test_etl_unload.sh BUILD_ROOT
set -u
build=${1:?usage: test_etl_unload.sh BUILD_ROOT}
etl=$build/tools/cds-etl
py=/usr/bin/python3
[ -n "${PGHOST:-}" ] || { echo "Bail out! PGHOST is not set: run through scripts/with-services"; exit 1; }
export PGDATABASE=cds_etl_$$
createdb "$PGDATABASE" || { echo "Bail out! createdb failed"; exit 1; }
root=$(mktemp -d /tmp/cds-etl-test.XXXXXX)
cleanup() { dropdb --if-exists "$PGDATABASE" >/dev/null 2>&1; rm -rf "$root"; }
trap cleanup EXIT

n=0; failed=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi; }
sql() { psql -X -q -v ON_ERROR_STOP=1 -c "$1" >/dev/null; }
# npcheck DATASET_DIR PYTHON-EXPR-ON-x,y,m -> ok if the expression is true
npcheck() {
    $py - "$1" "$2" <<'PY'
import json, sys, numpy as np
d, expr = sys.argv[1], sys.argv[2]
x = np.load(d + "/x.npy", mmap_mode="r"); y = np.load(d + "/y.npy", mmap_mode="r")
m = json.load(open(d + "/manifest.json"))
ok = eval(expr)
if not ok:
    print("# x", x.dtype, x.shape, "y", y.dtype, y.shape, file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}
unload() { "$etl" unload --data-root "$root" "$@" >"$root/out" 2>"$root/err"; }
one_line_err() { [ "$(wc -l <"$root/err")" -eq 1 ] && grep -q "^cds-etl: " "$root/err"; }
no_trace() { [ ! -e "$root/datasets/$1" ] && ! ls -a "$root/datasets" 2>/dev/null | grep -q "^\.$1\."; }

# ---- feature sources, label forms -------------------------------------------
sql "CREATE TABLE scalars (id int PRIMARY KEY, a int2, b int4, c int8, d float4, e float8, f numeric, lab int)"
sql "INSERT INTO scalars SELECT i, i, -i, i*1000000000::int8, i/4.0, i/8.0, i*1.5 - 0.25, i % 3 FROM generate_series(1, 40) i"
unload --table scalars --features a,b,c,d,e,f --label lab --dataset sc --shards 2
ok $? "scalar columns of every numeric type unload"
npcheck "$root/datasets/sc/train/shard-0" "x.dtype == np.float32 and x.shape[1] == 6 and y.dtype == np.int32"; ok $? "x is float32 [rows, 6], y int32"
$py - "$root/datasets/sc/train" <<'PY'
import numpy as np, sys
xs = [np.load(f"{sys.argv[1]}/shard-{k}/x.npy") for k in (0, 1)]
ys = [np.load(f"{sys.argv[1]}/shard-{k}/y.npy") for k in (0, 1)]
x = np.concatenate(xs); y = np.concatenate(ys)
order = np.argsort(x[:, 0]); x = x[order]; y = y[order]
i = np.arange(1, 41, dtype=np.float64)
want = np.stack([i, -i, i * 1e9, i / 4, i / 8, i * 1.5 - 0.25], 1).astype(np.float32)
sys.exit(0 if len(x) == 40 and np.array_equal(x, want) and np.array_equal(y, (i % 3).astype(np.int32)) and min(len(a) for a in xs) > 5 else 1)
PY
ok $? "every value, over both shards, equals the table's (and both shards have rows)"

sql "CREATE TABLE arrs (id int PRIMARY KEY, v real[], m float8[][], lab smallint[])"
sql "INSERT INTO arrs SELECT i, ARRAY[i, i+0.5, -i], ARRAY[[i,1,2],[3,4,i]], CASE WHEN i % 2 = 0 THEN '{1,0}'::smallint[] ELSE '{0,1}' END FROM generate_series(1, 30) i"
unload --table arrs --features m --label lab --dataset nd --shards 1
ok $? "a 2-D array column with a one-hot smallint[] label"
npcheck "$root/datasets/nd/train/shard-0" "x.shape == (30, 2, 3) and np.array_equal(np.sort(x[:, 0, 0]), np.arange(1, 31)) and all(y[k] == (0 if x[k,0,0] % 2 == 0 else 1) for k in range(30)) and m['num_classes'] == 2"; ok $? "N-D shape kept, one-hot converted to class ids"
# The manifest's checksum is what the standard tool computes (docs/etl.md).
d="$root/datasets/nd/train/shard-0"
for f in x y; do
    want=$($py -c "import json; print(json.load(open('$d/manifest.json'))['files']['$f.npy']['xxh128'])")
    got=$(tail -c +129 "$d/$f.npy" | xxhsum -H2 | cut -d' ' -f1)
    [ -n "$want" ] && [ "$got" = "$want" ]; ok $? "$f.npy: tail -c +129 | xxhsum -H2 gives the manifest's xxh128 ($got)"
done
unload --table arrs --features v,id --label lab --dataset mix --shards 1
npcheck "$root/datasets/mix/train/shard-0" "x.shape == (30, 4) and all(x[k,3] == x[k,0] and x[k,1] == x[k,0] + 0.5 and x[k,2] == -x[k,0] for k in range(30))"; ok $? "an array and a scalar column are concatenated per row"

sql "CREATE TABLE pix (id int PRIMARY KEY, img bytea, raw bytea, lab text)"
sql "INSERT INTO pix SELECT i, decode(repeat(lpad(to_hex(i), 2, '0'), 12), 'hex'), float4send(i::real) || float4send(-i::real), (ARRAY['cat','dog','bird'])[1 + i % 3] FROM generate_series(1, 20) i"
unload --table pix --features img --label lab --dataset px --shards 1 --feature-shape 2x3x2 --dtype uint8
npcheck "$root/datasets/px/train/shard-0" "x.dtype == np.uint8 and x.shape == (20, 2, 3, 2) and all((x[k] == x[k].flat[0]).all() for k in range(20)) and sorted(x[:,0,0,0]) == list(range(1, 21)) and m['classes'] == ['bird','cat','dog']"; ok $? "bytea uint8 pixels with --feature-shape; text labels dictionary-encoded (sorted)"
npcheck "$root/datasets/px/train/shard-0" "all(m['classes'][y[k]] == ['cat','dog','bird'][(int(x[k,0,0,0])) % 3] for k in range(20))"; ok $? "each text label maps back to its class name"
sql "CREATE TABLE pixf (id int PRIMARY KEY, raw bytea, lab int)"
$py -c "
import struct
print('\n'.join('%d\t\\\\\\\\x%s\t%d' % (i, struct.pack('<2f', i, -i).hex(), i % 2) for i in range(1, 11)))" | psql -X -q -c "COPY pixf FROM STDIN" >/dev/null
unload --table pixf --features raw --label lab --dataset pf --shards 1 --feature-shape 2 --feature-encoding float32le
npcheck "$root/datasets/pf/train/shard-0" "x.shape == (10, 2) and all(x[k,1] == -x[k,0] for k in range(10)) and sorted(x[:,0]) == list(range(1, 11))"; ok $? "bytea holding little-endian float32"

sql "CREATE TABLE \"Mixed Case Table\" (\"Id\" int PRIMARY KEY, \"Feat One\" real, \"LABEL\" int)"
sql "INSERT INTO \"Mixed Case Table\" SELECT i, i * 2, i % 4 FROM generate_series(1, 25) i"
unload --table "Mixed Case Table" --features "Feat One" --label LABEL --dataset mc --shards 2 --valid-fraction 0.2
ok $? "a table name with spaces and mixed-case quoted columns"
$py - "$root/datasets/mc" <<'PY'
import numpy as np, sys
d = sys.argv[1]
tr = np.concatenate([np.load(f"{d}/train/shard-{k}/x.npy")[:, 0] for k in (0, 1)])
va = np.concatenate([np.load(f"{d}/valid/shard-{k}/x.npy")[:, 0] for k in (0, 1)])
allv = sorted(np.concatenate([tr, va]))
sys.exit(0 if allv == [2.0 * i for i in range(1, 26)] and 1 <= len(va) <= 12 and not set(tr) & set(va) else 1)
PY
ok $? "--valid-fraction splits the rows without overlap or loss"

sql "CREATE TABLE mad (buffer_id int PRIMARY KEY, independent_var real[], dependent_var smallint[], independent_var_shape int[], dependent_var_shape int[])"
sql "INSERT INTO mad VALUES (0, '{1,2,3,4,5,6}', '{1,0,0, 0,0,1}', '{2,3}', '{2,3}'), (1, '{7,8,9,10,11,12,13,14,15}', '{0,1,0, 0,1,0, 1,0,0}', '{3,3}', '{3,3}')"
unload --table mad --features independent_var --label dependent_var --dataset madlib --shards 1
npcheck "$root/datasets/madlib/train/shard-0" "x.shape == (5, 3) and sorted(map(tuple, x.tolist())) == [(1,2,3),(4,5,6),(7,8,9),(10,11,12),(13,14,15)] and {tuple(x[k]): int(y[k]) for k in range(5)}[(4.0,5.0,6.0)] == 2 and {tuple(x[k]): int(y[k]) for k in range(5)}[(13.0,14.0,15.0)] == 0"; ok $? "a MADlib training_preprocessor_dl table is unpacked to rows"

"$etl" inspect "$root/datasets/sc/train/shard-0" >"$root/out" 2>&1
ok $? "cds-etl inspect checks a good shard"
ok "$(grep -q 'sizes, shapes and XXH3-128 of every file' "$root/out"; echo $?)" "and says what it verified"
v=$($py -c "import json; print(json.load(open('$root/datasets/sc/dataset.json'))['version'])")
npcheck "$root/datasets/sc/train/shard-1" "m['dataset_version'] == '$v' and m['num_classes'] == 3 and m['rows'] == len(y) and m['source']['server']['kind'] == 'postgresql' and len(m['source']['snapshot']['exported']) > 0"; ok $? "manifest: dataset version, class count (settled at finish), rows, server, exported snapshot"

# ---- bad input: one line, non-zero exit, nothing left -------------------------
check_refused() { # DESCRIPTION DATASET PATTERN ARGS...
    local what=$1 ds=$2 pat=$3; shift 3
    unload --dataset "$ds" "$@"; local rc=$?
    if [ $rc -ne 0 ] && one_line_err && grep -q -- "$pat" "$root/err" && { [ "$ds" = sc ] || no_trace "$ds"; }; then ok 0 "$what ($(cut -c1-120 <"$root/err"))"
    else ok 1 "$what: rc=$rc err=$(cat "$root/err")"; fi
}
sql "CREATE TABLE nulls (id int PRIMARY KEY, a real, lab int)"
sql "INSERT INTO nulls VALUES (1, 1, 0), (2, NULL, 1), (3, 3, 1)"
sql "CREATE TABLE nulllab (id int PRIMARY KEY, a real, lab int)"
sql "INSERT INTO nulllab VALUES (1, 1, 0), (2, 2, NULL), (3, 3, 1)"
sql "CREATE TABLE ragged (id int PRIMARY KEY, v real[], lab int)"
sql "INSERT INTO ragged VALUES (1, '{1,2,3}', 0), (2, '{1,2}', 1)"
sql "CREATE TABLE texts (id int PRIMARY KEY, name text, lab int)"
sql "INSERT INTO texts VALUES (1, 'x', 0), (2, 'y', 1)"
check_refused "unknown table" bad1 'table "nope" does not exist' --table nope --features a --label lab --shards 1
check_refused "unknown column" bad2 'column "zz" (--features) not found in table "scalars"' --table scalars --features a,zz --label lab --shards 1
check_refused "uncastable type" bad3 'type text, which cannot be cast' --table texts --features name --label lab --shards 1
check_refused "NULL in a feature" bad4 'NULL in feature column "a"' --table nulls --features a --label lab --shards 1
check_refused "NULL in the label" bad5 'NULL in label column "lab"' --table nulllab --features a --label lab --shards 1
check_refused "ragged arrays" bad6 'ragged arrays in column "v"' --table ragged --features v --label lab --shards 1
check_refused "wrong --shards" bad7 'shards' --table scalars --features a --label lab --shards 0
check_refused "existing dataset without --replace" sc 'already exists' --table scalars --features a --label lab --shards 1
npcheck "$root/datasets/sc/train/shard-0" "x.shape[1] == 6"; ok $? "the existing dataset is untouched"
unload --table scalars --features a --label lab --dataset sc --shards 1 --replace
npcheck "$root/datasets/sc/train/shard-0" "x.shape[1] == 1 and len(y) == 40"; ok $? "--replace overwrites it"

# ---- faults ------------------------------------------------------------------
sql "CREATE TABLE slow (id int PRIMARY KEY, a real, lab int)"
sql "INSERT INTO slow SELECT i, i, i % 2 FROM generate_series(1, 3000) i"
( for _ in $(seq 200); do
      pid=$(psql -X -At -c "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT%slow%' AND pid <> pg_backend_pid() LIMIT 1")
      if [ -n "$pid" ]; then psql -X -At -c "SELECT pg_terminate_backend($pid)" >/dev/null; exit 0; fi
      sleep 0.05
  done ) &
killer=$!
unload --table slow --features a --label lab --dataset killed --shards 1 --where "pg_sleep(0.001) IS NOT NULL"
rc=$?
wait $killer
if [ $rc -eq 1 ] && one_line_err && grep -q -i "terminat\|connection" "$root/err" && no_trace killed; then ok 0 "a backend killed mid-unload fails with a clear error and leaves no shard ($(cut -c1-100 "$root/err"))"
else ok 1 "backend killed: rc=$rc $(cat "$root/err")"; fi
unload --table slow --features a --label lab --dataset killed --shards 1
npcheck "$root/datasets/killed/train/shard-0" "len(y) == 3000"; ok $? "the retry succeeds"

sql "CREATE TABLE wide (id int PRIMARY KEY, v real[], lab int)"
sql "INSERT INTO wide SELECT i, array_fill(i::real, ARRAY[256]), i % 2 FROM generate_series(1, 3000) i"
( ulimit -f 512; unload --table wide --features v --label lab --dataset efbig --shards 1 ); rc=$?
if [ $rc -ne 0 ] && one_line_err && grep -q "File too large" "$root/err" && no_trace efbig; then ok 0 "RLIMIT_FSIZE: EFBIG reported, temporary files removed"
else ok 1 "EFBIG: rc=$rc $(cat "$root/err")"; fi
small=$root/small
mkdir -p "$small"
if mount -t tmpfs -o size=256k tmpfs "$small" 2>/dev/null; then
    "$etl" unload --data-root "$small" --table wide --features v --label lab --dataset full --shards 1 >"$root/out" 2>"$root/err"; rc=$?
    left=$(find "$small" -mindepth 2 | wc -l)
    if [ $rc -ne 0 ] && one_line_err && grep -q "No space left" "$root/err" && [ "$left" -eq 0 ]; then ok 0 "a full disk (ENOSPC): clear error, temporary files removed"
    else ok 1 "ENOSPC: rc=$rc left=$left $(cat "$root/err")"; fi
    umount "$small"
else
    n=$((n + 1)); echo "ok $n # SKIP cannot mount a tmpfs here (not root?)"
fi

echo "1..$n"
[ $failed -eq 0 ]
