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

. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
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
# A secret setting other than the password (libpq marks them with '*') is
# no more shown than the password is.
unload --dsn "host=/nonexistent-cds-socket-dir sslpassword=topsecret-ssl password=topsecret-pw" --table scalars --features a --label lab --dataset bad8 --shards 1
if [ $? -ne 0 ] && one_line_err && grep -q "cannot connect to the database (host='/nonexistent-cds-socket-dir')" "$root/err" && ! grep -q topsecret "$root/err"; then ok 0 "a failed connection names the DSN without password or sslpassword ($(cut -c1-100 "$root/err"))"
else ok 1 "failed connection: $(cat "$root/err")"; fi
npcheck "$root/datasets/sc/train/shard-0" "x.shape[1] == 6"; ok $? "the existing dataset is untouched"
unload --table scalars --features a --label lab --dataset sc --shards 1 --replace
npcheck "$root/datasets/sc/train/shard-0" "x.shape[1] == 1 and len(y) == 40"; ok $? "--replace overwrites it"

# ---- MADlib training_preprocessor_dl tables, as MADlib writes them ----------
# mad_tables.py makes them with numpy as MADlib does: rows normalised and cut
# into buffers of 4 (buffer_id = row / 4), x packed with float32 tobytes(),
# y one-hot int16 tobytes() (little-endian), shapes {rows, dims...}, and a
# <table>_summary with the columns MADlib 1.17 (literal names, text names,
# smallint[] shapes, class_values) or 1.18+ (source-named columns, text[]
# names, integer[] shapes, <y>_class_values) creates.
cat >"$root/mad_tables.py" <<'PY'
import numpy as np
N, B = 10, 4
img = np.stack([np.array([[i, i + .5], [-i, i / 4]], np.float32) for i in range(N)]) * np.float32(1 / 255)
aux = np.stack([np.array([2 * i, 3 * i], np.float32) for i in range(N)])
lab = [["cat", "dog", "bird"][i % 3] for i in range(N)]          # text: levels sorted
num = [[3, 5, 7][i % 3] for i in range(N)]                        # integer, num_classes 4: a NULL pad
grp = [["a", "b"][i % 2] for i in range(N)]
def onehot(vals, levels):
    y = np.zeros((len(vals), len(levels)), np.int16)
    for r, v in enumerate(vals):
        y[r, levels.index(v)] = 1
    return y
def b(a):
    return "'\\x" + np.ascontiguousarray(a).tobytes().hex() + "'::bytea"
def arr(a, t):
    return "'{" + ",".join(repr(float(v)) if t != "smallint" else str(int(v)) for v in np.ravel(a)) + "}'::" + t + "[]"
def shape(a, t):
    return "ARRAY[" + ",".join(str(d) for d in a.shape) + "]::" + t + "[]"
def buffers():
    return [(k, slice(k * B, min(N, (k + 1) * B))) for k in range((N + B - 1) // B)]
out = []
# MADlib 1.17: literal names, bytea, smallint[] shapes.
Y = onehot(lab, ["bird", "cat", "dog"])
out.append("CREATE TABLE m17 (independent_var bytea, dependent_var bytea, independent_var_shape smallint[], dependent_var_shape smallint[], buffer_id integer)")
for k, s in buffers():
    out.append(f"INSERT INTO m17 VALUES ({b(img[s])}, {b(Y[s])}, {shape(img[s], 'smallint')}, {shape(Y[s], 'smallint')}, {k})")
out.append("CREATE TABLE m17_summary AS SELECT 'src'::text AS source_table, 'm17'::text AS output_table, 'lab'::text AS dependent_varname, "
           "'img'::text AS independent_varname, 'text'::text AS dependent_vartype, ARRAY['bird','cat','dog']::text[] AS class_values, "
           "4 AS buffer_size, 255.0::real AS normalizing_const, 3 AS num_classes, 'all_segments'::text AS distribution_rules, "
           "'all_segments'::text AS __internal_gpu_config__")
# MADlib 1.18+: columns named after the source columns, two of each, with
# __dist_key__ as on Greenplum.
YN, YG = onehot(num, [3, 5, 7, None]), onehot(grp, ["a", "b"])
out.append('CREATE TABLE m21 (__dist_key__ integer, img bytea, aux bytea, num bytea, grp bytea, img_shape integer[], aux_shape integer[], num_shape integer[], grp_shape integer[], buffer_id integer)')
for k, s in buffers():
    out.append(f"INSERT INTO m21 VALUES ({k % 2}, {b(img[s])}, {b(aux[s])}, {b(YN[s])}, {b(YG[s])}, {shape(img[s], 'integer')}, {shape(aux[s], 'integer')}, {shape(YN[s], 'integer')}, {shape(YG[s], 'integer')}, {k})")
out.append("CREATE TABLE m21_summary AS SELECT 'src'::text AS source_table, 'm21'::text AS output_table, ARRAY['num','grp'] AS dependent_varname, "
           "ARRAY['img','aux'] AS independent_varname, ARRAY['integer','text'] AS dependent_vartype, ARRAY[3,5,7,NULL]::integer[] AS num_class_values, "
           "ARRAY['a','b']::text[] AS grp_class_values, 4 AS buffer_size, 255.0::real AS normalizing_const, ARRAY[4,2]::integer[] AS num_classes, "
           "'all_segments'::text AS distribution_rules, 'all_segments'::text AS __internal_gpu_config__")
# The array forms: x a float8[] with a float32-bytea twin, y a smallint[].
out.append("CREATE TABLE marr (x double precision[], y smallint[], x_shape integer[], y_shape integer[], buffer_id integer)")
for k, s in buffers():
    out.append(f"INSERT INTO marr VALUES ({arr(img[s], 'double precision')}, {arr(Y[s], 'smallint')}, {shape(img[s], 'integer')}, {shape(Y[s], 'integer')}, {k})")
out.append("CREATE TABLE marr_summary AS SELECT ARRAY['y'] AS dependent_varname, ARRAY['x'] AS independent_varname, ARRAY['text'] AS dependent_vartype, "
           "ARRAY['bird','cat','dog']::text[] AS y_class_values, 1.0::real AS normalizing_const")
# Refused: one bad buffer (buffer 1) after a good one in each.
def bad(name, xb, yb, xs, ys):
    out.append(f"CREATE TABLE {name} (independent_var bytea, dependent_var bytea, independent_var_shape integer[], dependent_var_shape integer[], buffer_id integer)")
    s = slice(0, 4)
    out.append(f"INSERT INTO {name} VALUES ({b(img[s])}, {b(Y[s])}, {shape(img[s], 'integer')}, {shape(Y[s], 'integer')}, 0)")
    out.append(f"INSERT INTO {name} VALUES ({xb}, {yb}, {xs}, {ys}, 1)")
s = slice(4, 8)
bad("bad_len", b(img[4:7]), b(Y[s]), shape(img[s], 'integer'), shape(Y[s], 'integer'))         # 3 rows of x, shape says 4
bad("bad_odd", b(img[s])[:-14] + "'::bytea", b(Y[s]), shape(img[s], 'integer'), shape(Y[s], 'integer'))   # 61 bytes
bad("bad_yodd", b(img[s]), b(Y[s])[:-10] + "'::bytea", shape(img[s], 'integer'), shape(Y[s], 'integer'))  # 23 bytes
Y2 = Y[s].copy(); Y2[1] = [0, 1, 1]
bad("bad_multi", b(img[s]), b(Y2), shape(img[s], 'integer'), shape(Y[s], 'integer'))
Y3 = Y[s].copy(); Y3[2] = [0, 2, 0]
bad("bad_id", b(img[s]), b(Y3), shape(img[s], 'integer'), shape(Y[s], 'integer'))
# A numeric array label ARRAY[class id], which MADlib casts to smallint[] as is.
ids = np.array([[i % 3] for i in range(N)], np.int16)
out.append("CREATE TABLE m_ids (independent_var bytea, dependent_var bytea, independent_var_shape integer[], dependent_var_shape integer[], buffer_id integer)")
for k, s in buffers():
    out.append(f"INSERT INTO m_ids VALUES ({b(img[s])}, {b(ids[s])}, {shape(img[s], 'integer')}, {shape(ids[s], 'integer')}, {k})")
# Whole-number float32 values, for --dtype uint8 from bytea.
ints = np.arange(N * 4, dtype=np.float32).reshape(N, 2, 2)
out.append("CREATE TABLE mu8 (independent_var bytea, dependent_var bytea, independent_var_shape integer[], dependent_var_shape integer[], buffer_id integer)")
for k, s in buffers():
    out.append(f"INSERT INTO mu8 VALUES ({b(ints[s])}, {b(Y[s])}, {shape(ints[s], 'integer')}, {shape(Y[s], 'integer')}, {k})")
# 65 independent variables, more than one unload takes together: x<j> of
# row i holds 100 j + i.
W = 65
xcols = [f"x{j}" for j in range(W)]
out.append("CREATE TABLE mwide (" + ", ".join(f"{c} bytea" for c in xcols) + ", y bytea, "
           + ", ".join(f"{c}_shape integer[]" for c in xcols) + ", y_shape integer[], buffer_id integer)")
for k, s in buffers():
    xs = [(np.arange(N, dtype=np.float32)[s] + 100 * j).reshape(-1, 1) for j in range(W)]
    out.append("INSERT INTO mwide VALUES (" + ", ".join(b(x) for x in xs) + f", {b(YG[s])}, "
               + ", ".join(shape(x, "integer") for x in xs) + f", {shape(YG[s], 'integer')}, {k})")
out.append("CREATE TABLE mwide_summary AS SELECT ARRAY[" + ", ".join(f"'{c}'" for c in xcols) + "] AS independent_varname, "
           "ARRAY['y'] AS dependent_varname, ARRAY['numeric'] AS dependent_vartype, ARRAY[0.10, 2.50]::numeric[] AS y_class_values")
print(";\n".join(out) + ";")
PY
$py "$root/mad_tables.py" | psql -X -q -v ON_ERROR_STOP=1 >/dev/null
ok $? "MADlib-shaped tables built (1.17 bytea, 1.18+ source-named, array forms, refusals)"
# madcheck DATASET SPLIT-EXPR: the unloaded rows (both shards, sorted by the first
# value) against the source rows, x exactly and y as the class position.
madcheck() {
    $py - "$root/datasets/$1" "$2" <<'PY'
import json, sys, glob, numpy as np
d, expr = sys.argv[1], sys.argv[2]
xs = [np.load(f) for f in sorted(glob.glob(d + "/train/shard-*/x.npy"))]
ys = [np.load(f) for f in sorted(glob.glob(d + "/train/shard-*/y.npy"))]
m = json.load(open(sorted(glob.glob(d + "/train/shard-*/manifest.json"))[0]))
x = np.concatenate(xs); y = np.concatenate(ys)
o = np.argsort(x.reshape(len(x), -1)[:, 0], kind="stable"); x = x[o]; y = y[o]
N = 10
img = np.stack([np.array([[i, i + .5], [-i, i / 4]], np.float32) for i in range(N)]) * np.float32(1 / 255)
aux = np.stack([np.array([2 * i, 3 * i], np.float32) for i in range(N)])
lab = np.array([[1, 2, 0][i % 3] for i in range(N)]); num = np.array([i % 3 for i in range(N)]); grp = np.array([i % 2 for i in range(N)])
ok = eval(expr)
if not ok:
    print("# x", x.dtype, x.shape, "y", y.tolist(), "classes", m.get("classes"), "madlib", m.get("madlib"), file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}
unload --table m17 --features independent_var --label dependent_var --dataset m17 --shards 2
ok $? "MADlib 1.17 table (bytea float32 x, bytea int16 one-hot y, smallint[] shapes) unloads"
madcheck m17 "x.dtype == np.float32 and x.shape == (10, 2, 2) and np.array_equal(x, img) and np.array_equal(y, lab) and all(len(a) for a in xs)"
ok $? "every x value exact, every y the one-hot position, over both shards"
madcheck m17 "m['classes'] == ['bird', 'cat', 'dog'] and m['num_classes'] == 3 and m['madlib']['normalizing_const'] == 255 and m['madlib']['summary_table'] == '\"public\".\"m17_summary\"' and m['layout'] == 'madlib'"
ok $? "manifest: class_values from m17_summary as classes, normalizing_const recorded"
unload --table m17 --features img --label lab --dataset m17b --shards 1
madcheck m17b "np.array_equal(x, img) and np.array_equal(y, lab)"
ok $? "the summary's source names select the literal columns too (--features img --label lab)"
unload --table m21 --features img,aux --label num --dataset m21 --shards 2
ok $? "MADlib 1.18+ table (columns named after the source, two x and two y, __dist_key__) unloads"
madcheck m21 "x.shape == (10, 6) and np.array_equal(x, np.concatenate([img.reshape(10, 4), aux], 1)) and np.array_equal(y, num) and m['classes'] == ['3', '5', '7', None] and m['num_classes'] == 4"
ok $? "two independent variables concatenated per row; num's class values (with MADlib's NULL pad) as classes"
unload --table m21 --features img --label grp --dataset m21g --shards 1
madcheck m21g "x.shape == (10, 2, 2) and np.array_equal(x, img) and np.array_equal(y, grp) and m['classes'] == ['a', 'b'] and m['madlib']['dependent_varname'] == ['num', 'grp']"
ok $? "one independent variable keeps its shape; --label picks the other dependent variable"
unload --table marr --features independent_var --label dependent_var --dataset marr --shards 1
madcheck marr "np.array_equal(x, img) and np.array_equal(y, lab) and m['classes'] == ['bird', 'cat', 'dog']"
ok $? "array forms (float8[] x, smallint[] y) named by the summary, through the literal aliases"
check_refused "MADlib: several dependent variables, no choice" mr1 'has 2 dependent variables (num, grp).*--label' --table m21 --features independent_var --label dependent_var --shards 1
check_refused "MADlib: x bytes disagree with the shape" mr2 'holds 48 bytes (12 float32 values) but independent_var_shape is {4,2,2}, 16 values' --table bad_len --features independent_var --label dependent_var --shards 1
check_refused "MADlib: odd byte length" mr3 'holds 61 bytes, not a whole number of float32 values' --table bad_odd --features independent_var --label dependent_var --shards 1
check_refused "MADlib: odd byte length of y" mr3y 'holds 23 bytes, not a whole number of int16 values' --table bad_yodd --features independent_var --label dependent_var --shards 1
check_refused "MADlib: a y row with two 1s" mr4 'row 2 of 4 in the buffer, is not one-hot: it has 1 at class positions 1 and 2' --table bad_multi --features independent_var --label dependent_var --shards 1
check_refused "MADlib: a y row holding a class id" mr5 'buffer_id 1 .*row 3 of 4 in the buffer, is not one-hot: it holds 2 at class position 1' --table bad_id --features independent_var --label dependent_var --shards 1
check_refused "MADlib: a class-id array label (shape {rows,1})" mr6 'dependent_var_shape is {4,1}: dependent variable "dependent_var" holds one value per row (class ids, not one-hot)' --table m_ids --features independent_var --label dependent_var --shards 1
sql "CREATE TABLE m16 (independent_var real[], dependent_var smallint[], buffer_id smallint)"
sql "INSERT INTO m16 VALUES ('{{1,2},{3,4}}', '{{1,0},{0,1}}', 0)"
check_refused "MADlib 1.16 (2-D arrays, no shape columns)" mr8 'looks like a MADlib 1.16 .*re-run training_preprocessor_dl with MADlib 1.17 or later' --table m16 --features independent_var --label dependent_var --shards 1
check_refused "MADlib: --label not a dependent variable" mr7 '"lab" is not the dependent variable of MADlib table "marr"' --table marr --features x --label lab --shards 1
unload --table mwide --features x3,x64 --label y --dataset mwide --shards 1
madcheck mwide "x.shape == (10, 2) and np.array_equal(x, np.stack([300 + np.arange(10), 6400 + np.arange(10)], 1).astype(np.float32)) and np.array_equal(y, grp)"
ok $? "a MADlib table with 65 independent variables: --features takes two of them"
madcheck mwide "m['classes'] == ['0.10', '2.50']"
ok $? "numeric class values keep PostgreSQL's text form (2.50, not 2.5)"
check_refused "MADlib: more independent variables than one unload takes" mr9 'has 65 independent variables and at most 64 are unloaded together: name up to 64 of them in --features' --table mwide --features independent_var --label y --shards 1
check_refused "MADlib: an unknown --features lists the table's, cut to fit" mr10 '"nope" is not a packed independent variable .*(it has: x0, x1, x2, .*, \.\.\.); name those' --table mwide --features nope --label y --shards 1
unload --table mu8 --features independent_var --label dependent_var --dataset mu8 --shards 1 --dtype uint8
madcheck mu8 "x.dtype == np.uint8 and np.array_equal(x, np.arange(40).reshape(10, 2, 2)) and np.array_equal(y, lab)"
ok $? "MADlib float32 bytea into --dtype uint8"
unload --table mad --features independent_var --label dependent_var --dataset madu8 --shards 1 --dtype uint8
npcheck "$root/datasets/madu8/train/shard-0" "x.dtype == np.uint8 and sorted(map(tuple, x.tolist())) == [(1,2,3),(4,5,6),(7,8,9),(10,11,12),(13,14,15)]"; ok $? "a MADlib real[] buffer into --dtype uint8"
check_refused "MADlib: bytea values that do not fit uint8" mr11 'buffer_id [0-9]* of table "m17": value 0.00196078 in column "independent_var" does not fit uint8' --table m17 --features independent_var --label dependent_var --shards 1 --dtype uint8
check_refused "MADlib: array values that do not fit uint8" mr12 'buffer_id [0-9]* of table "marr": MADlib column "x": array element 2 of 16: value 0.00196078 does not fit uint8' --table marr --features x --label y --shards 1 --dtype uint8

# ---- faults ------------------------------------------------------------------
sql "CREATE TABLE slow (id int PRIMARY KEY, a real, lab int)"
sql "INSERT INTO slow SELECT i, i, i % 2 FROM generate_series(1, 3000) i"
( for _ in $(seq 200); do
      pid=$(psql -X -At -c "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'COPY (SELECT%slow%' AND pid <> pg_backend_pid() LIMIT 1")
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

tap_done
