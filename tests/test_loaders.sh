#!/usr/bin/env bash
# The dataset loaders against the real PostgreSQL of scripts/with-services:
# load-fashion-mnist (bytea and --as-array) checked row by row against the
# IDX files, refusals with one line and nothing half-made (an existing table,
# a truncated or mismatched file, an unreachable server, without leaking a
# password), and gen-criteo: row count, NULLs and empties, the positive rate,
# the planted signal, determinism.  usage: test_loaders.sh BUILD_ROOT
set -u
build=${1:?usage: test_loaders.sh BUILD_ROOT}
lfm=$build/tools/load-fashion-mnist
gen=$build/tools/gen-criteo
py=/usr/bin/python3 # Debian's, not a pyenv shim that may lack the stdlib we need
fm=/usr/share/datasets/fashion-mnist
[ -n "${PGHOST:-}" ] || { echo "Bail out! PGHOST is not set: run through scripts/with-services"; exit 1; }
[ -r "$fm/train-images-idx3-ubyte.gz" ] || { echo "Bail out! $fm is missing: install dataset-fashion-mnist (scripts/install-deps)"; exit 1; }
export PGDATABASE=cds_loaders_$$
createdb "$PGDATABASE" || { echo "Bail out! createdb $PGDATABASE failed"; exit 1; }
tmp=$(mktemp -d /tmp/cds-loaders-test.XXXXXX)
cleanup() { dropdb --if-exists "$PGDATABASE" >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT

. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
q() { psql -X -A -t -q -v ON_ERROR_STOP=1 -c "$1"; }
# one_line_err PROG: stderr of the last command is exactly one line "PROG: ..."
one_line_err() { [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "^$1: " "$tmp/err"; }
# idx_rows SPLIT FORMAT IDS...: "id pixels label" from the IDX files (hex or csv)
idx_rows() {
    "$py" - "$fm" "$@" <<'PY'
import gzip, sys
d, split, fmt, ids = sys.argv[1], sys.argv[2], sys.argv[3], [int(x) for x in sys.argv[4:]]
img = gzip.open(f"{d}/{split}-images-idx3-ubyte.gz").read()
lab = gzip.open(f"{d}/{split}-labels-idx1-ubyte.gz").read()
for i in ids:
    px = img[16 + 784 * i:16 + 784 * (i + 1)]
    print(i, px.hex() if fmt == "hex" else "{" + ",".join(map(str, px)) + "}", lab[8 + i])
PY
}

# ---- load-fashion-mnist, bytea --------------------------------------------------
t0=$(date +%s.%N)
"$lfm" >"$tmp/out" 2>"$tmp/err"
rc=$?
t1=$(date +%s.%N)
ok $rc "load-fashion-mnist loads into fashion_mnist_{train,test} ($(tr '\n' ' ' <"$tmp/out"))"
echo "# load took $("$py" -c "print(round($t1 - $t0, 2))") s"
ok "$( [ "$(grep -c '^load-fashion-mnist: fashion_mnist_\(train: 60000\|test: 10000\) rows in [0-9.]* s$' "$tmp/out")" = 2 ] && [ ! -s "$tmp/err" ]; echo $?)" \
    "one summary line per table, nothing on stderr"
is "$(q "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM fashion_mnist_train")" "60000|60000|0|59999" "train: 60000 rows, ids 0..59999 unique"
is "$(q "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM fashion_mnist_test")" "10000|10000|0|9999" "test: 10000 rows, ids 0..9999 unique"
is "$(q "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'fashion_mnist_train'::regclass AND i.indisprimary")" "id" "id is the primary key"
is "$(q "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'fashion_mnist_train'::regclass AND attnum > 0 ORDER BY attnum" | tr '\n' ' ')" "integer bytea integer " "columns id int, pixels bytea, label int"
is "$(q "SELECT string_agg(label || ':' || c, ' ' ORDER BY label) FROM (SELECT label, count(*) c FROM fashion_mnist_train GROUP BY label) s")" \
    "0:6000 1:6000 2:6000 3:6000 4:6000 5:6000 6:6000 7:6000 8:6000 9:6000" "train labels 0..9, 6000 of each"
is "$(q "SELECT count(DISTINCT label), min(label), max(label) FROM fashion_mnist_test")" "10|0|9" "test labels 0..9"
is "$(q "SELECT count(*) FROM fashion_mnist_train WHERE octet_length(pixels) <> 784")" "0" "every image is 784 bytes"
idx_rows train hex 0 1 777 30000 59999 >"$tmp/want"
q "SELECT id || ' ' || encode(pixels, 'hex') || ' ' || label FROM fashion_mnist_train WHERE id IN (0, 1, 777, 30000, 59999) ORDER BY id" >"$tmp/got"
ok "$(cmp -s "$tmp/want" "$tmp/got"; echo $?)" "train images 0, 1, 777, 30000, 59999: pixels and labels equal the IDX files'"
idx_rows t10k hex 0 5000 9999 >"$tmp/want"
q "SELECT id || ' ' || encode(pixels, 'hex') || ' ' || label FROM fashion_mnist_test WHERE id IN (0, 5000, 9999) ORDER BY id" >"$tmp/got"
ok "$(cmp -s "$tmp/want" "$tmp/got"; echo $?)" "test images 0, 5000, 9999 equal the IDX files'"

# ---- refusals ---------------------------------------------------------------------
"$lfm" >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$( [ $rc -ne 0 ] && one_line_err load-fashion-mnist && grep -q 'fashion_mnist_train already exists.*--replace' "$tmp/err"; echo $?)" \
    "a second load without --replace is refused with one line, exit $rc ($(cat "$tmp/err"))"
is "$(q "SELECT (SELECT count(*) FROM fashion_mnist_train) + (SELECT count(*) FROM fashion_mnist_test)")" "70000" "and the tables are untouched"

mkdir -p "$tmp/bad"
for f in train-images-idx3-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do ln -s "$fm/$f.gz" "$tmp/bad/$f.gz"; done
head -c 20000 "$fm/train-labels-idx1-ubyte.gz" >"$tmp/bad/train-labels-idx1-ubyte.gz"
"$lfm" --dir "$tmp/bad" --table-prefix bad >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$( [ $rc -ne 0 ] && one_line_err load-fashion-mnist && grep -q 'train-labels-idx1-ubyte.gz is corrupt or truncated' "$tmp/err"; echo $?)" \
    "a truncated gzip is refused with one line ($(cat "$tmp/err"))"
gzip -dc "$fm/train-labels-idx1-ubyte.gz" | head -c 30008 >"$tmp/bad/train-labels-idx1-ubyte" && rm "$tmp/bad/train-labels-idx1-ubyte.gz"
"$lfm" --dir "$tmp/bad" --table-prefix bad >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$( [ $rc -ne 0 ] && one_line_err load-fashion-mnist && grep -q 'promises 60000 items' "$tmp/err"; echo $?)" \
    "an uncompressed IDX file shorter than its header says is refused ($(cat "$tmp/err"))"
ln -sf "$fm/train-labels-idx1-ubyte.gz" "$tmp/bad/train-images-idx3-ubyte.gz"
"$lfm" --dir "$tmp/bad" --table-prefix bad >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$( [ $rc -ne 0 ] && one_line_err load-fashion-mnist && grep -q 'is not an IDX image file' "$tmp/err"; echo $?)" \
    "a label file in place of the images is refused by its magic number ($(cat "$tmp/err"))"
is "$(q "SELECT count(*) FROM pg_class WHERE relname LIKE 'bad%'")" "0" "no table was made from bad files"
"$lfm" --dir "$tmp/nowhere" >"$tmp/out" 2>"$tmp/err"
ok "$( [ $? -ne 0 ] && one_line_err load-fashion-mnist && grep -q 'dataset-fashion-mnist' "$tmp/err"; echo $?)" "a missing directory names the package to install"
"$lfm" --bogus >"$tmp/out" 2>"$tmp/err"
is "$?" "2" "an unknown option exits 2"
"$lfm" --table-prefix other --dsn "postgresql://cds:sekret123@127.0.0.1:1/nowhere" >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$( [ $rc -ne 0 ] && one_line_err load-fashion-mnist && grep -q 'cannot connect' "$tmp/err" && ! grep -q sekret123 "$tmp/err" "$tmp/out"; echo $?)" \
    "an unreachable server: one line without the password ($(cat "$tmp/err"))"

# ---- --as-array, --replace ----------------------------------------------------------
"$lfm" --as-array --table-prefix fma >"$tmp/out" 2>"$tmp/err"
ok $? "--as-array --table-prefix fma loads ($(tr '\n' ' ' <"$tmp/out"))"
is "$(q "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'fma_train'::regclass AND attname = 'pixels'")" "smallint[]" "pixels is smallint[]"
is "$(q "SELECT count(*), min(array_length(pixels, 1)), max(array_length(pixels, 1)) FROM fma_train")" "60000|784|784" "60000 arrays of 784"
idx_rows train csv 3 59998 >"$tmp/want"
q "SELECT id || ' ' || pixels::text || ' ' || label FROM fma_train WHERE id IN (3, 59998) ORDER BY id" >"$tmp/got"
ok "$(cmp -s "$tmp/want" "$tmp/got"; echo $?)" "array pixels equal the IDX files'"
q "DELETE FROM fashion_mnist_test WHERE id < 5000"
"$lfm" --replace >"$tmp/out" 2>"$tmp/err"
ok $? "--replace reloads over existing tables"
is "$(q "SELECT count(*) FROM fashion_mnist_test")" "10000" "and the test table is whole again"

# ---- gen-criteo ----------------------------------------------------------------------
"$gen" --rows 20000 --seed 7 >"$tmp/out" 2>"$tmp/err"
ok $? "gen-criteo --rows 20000 --seed 7 ($(cat "$tmp/out" "$tmp/err"))"
ok "$(grep -q '^gen-criteo: criteo_raw: 20000 rows, positive rate 0\.[0-9]*, [0-9.]* s$' "$tmp/out"; echo $?)" "it prints rows, positive rate and seconds"
is "$(q "SELECT count(*), count(DISTINCT id) FROM criteo_raw")" "20000|20000" "20000 rows, ids unique"
is "$(q "SELECT count(*) FROM information_schema.columns WHERE table_name = 'criteo_raw'")" "41" "41 columns: id, label, i1..i13, c1..c26"
nulls=$(q "SELECT min(n) > 20000 * 0.03 AND max(n) < 20000 * 0.25 FROM (SELECT count(*) - count(v) n FROM criteo_raw, LATERAL (VALUES (1, i1), (2, i2), (3, i3), (4, i4), (5, i5), (6, i6), (7, i7), (8, i8), (9, i9), (10, i10), (11, i11), (12, i12), (13, i13)) t(k, v) GROUP BY k) s")
is "$nulls" "t" "every integer column has NULLs, 3..25% of rows"
is "$(q "SELECT min(least(i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13)) >= 0, max(i5) > 100 * percentile_disc(0.5) WITHIN GROUP (ORDER BY i5) FROM criteo_raw")" "t|t" "integers are non-negative and heavy-tailed"
is "$(q "SELECT count(*) FILTER (WHERE c3 IS NULL) > 0, count(*) FILTER (WHERE c3 = '') > 0, count(*) FILTER (WHERE c3 !~ '^[0-9a-f]{8}\$' AND c3 <> '') FROM criteo_raw")" "t|t|0" "categoricals: NULLs, empty strings, else 8 lowercase hex digits"
is "$(q "SELECT count(DISTINCT NULLIF(c9, '')) <= 3, count(DISTINCT c3) > 1000, (SELECT count(*) FROM criteo_raw WHERE c3 <> '' GROUP BY c3 ORDER BY 1 DESC LIMIT 1) > 20000 / 50 FROM criteo_raw")" "t|t|t" "vocabularies from tiny to large, with a Zipf-like head"
rate=$(q "SELECT round(avg(label), 4) FROM criteo_raw")
ok "$("$py" -c "import sys; sys.exit(0 if 0.15 <= $rate <= 0.4 else 1)"; echo $?)" "positive rate $rate is within 0.15..0.40"
is "$(q "SELECT avg(label) FILTER (WHERE i1 >= 10) - avg(label) FILTER (WHERE i1 < 2) > 0.15 FROM criteo_raw")" "t" "the label depends on i1 (the planted signal)"
sum() { q "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM $1 t"; }
"$gen" --rows 20000 --seed 7 --table criteo_again >"$tmp/out" 2>"$tmp/err"
is "$(sum criteo_again)" "$(sum criteo_raw)" "the same seed makes the same table"
"$gen" --rows 20000 --seed 8 --table criteo_other >"$tmp/out" 2>"$tmp/err"
ok "$( [ "$(sum criteo_other)" != "$(sum criteo_raw)" ]; echo $?)" "another seed makes another table"
"$gen" --rows 100 >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$( [ $rc -ne 0 ] && one_line_err gen-criteo && grep -q 'criteo_raw already exists.*--replace' "$tmp/err"; echo $?)" \
    "an existing table is refused with one line ($(cat "$tmp/err"))"
is "$(q "SELECT count(*) FROM criteo_raw")" "20000" "and left as it was"
"$gen" --rows 100 --replace >"$tmp/out" 2>"$tmp/err"
ok $? "--replace regenerates it"
is "$(q "SELECT count(*) FROM criteo_raw")" "100" "with the new row count"
"$gen" --rows 0 >"$tmp/out" 2>"$tmp/err"
rc=$?
ok "$( [ $rc -eq 2 ] && one_line_err gen-criteo; echo $?)" "--rows 0 is bad usage, exit 2 ($(cat "$tmp/err"))"

tap_done
