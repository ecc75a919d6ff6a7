#!/usr/bin/env bash
# jobctl export (docs/export.md) against the real Redis of
# scripts/with-services: checkpoints of an mlp with dropout, the cnn, a
# resnet18 with batch norm and a sparse mlp (tests/export_fixture.c, which
# also records the engine's logits) exported as safetensors and as ONNX and
# checked by tests/export_check.py (safetensors read by hand, loaded
# strictly by torch's modules where torch is installed; ONNX through
# onnx.checker where python3-onnx is installed and run by a numpy
# interpreter; the engine's logits within 1e-5 each time); a model named
# through a sweep (SWEEP, SWEEP/MODEL, SWEEP/MODEL@EPOCH); and the bad
# inputs, each one line, a non-zero exit and no file written or changed.
# usage: test_export.sh BUILD_ROOT
set -u
. "$(dirname "${BASH_SOURCE[0]}")/redis_env.sh" export "${1:?usage: test_export.sh BUILD_ROOT}"
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
names="mlp cnn resnet18 mlp_sparse"

"$build/tests/export_fixture" "$root" 2>"$root/fixture.err"
ok $? "the fixture trained and saved 4 checkpoints$([ -s "$root/fixture.err" ] && echo " ($(head -1 "$root/fixture.err"))")"
bad=""
for m in $names; do
    for f in safetensors onnx; do
        jobctl export --ckpt "$root/$m.ckpt" --format $f --out "$root/$m.$f" >/dev/null 2>"$root/err" ||
            bad+=" $m.$f:$(head -1 "$root/err")"
    done
done
ok "$([ -z "$bad" ]; echo $?)" "jobctl export --ckpt writes each as safetensors and as ONNX${bad:+ (failed:$bad)}"
while read -r verdict what; do
    case $verdict in
    PASS) ok 0 "$what" ;;
    FAIL) ok 1 "$what" ;;
    SKIP) n=$((n + 1)); echo "ok $n - $what" ;;
    esac
done < <(/usr/bin/python3 "$src/tests/export_check.py" "$root" $names 2>&1 | sed 's/^Traceback/FAIL Traceback/'
         # onnxruntime where a user made var/ort-venv (PyPI's; never needed)
         ort=$src/var/ort-venv/bin/python
         if [ -x "$ort" ] && "$ort" -c 'import onnxruntime' 2>/dev/null; then
             "$ort" "$src/tests/export_ort.py" "$root" $names 2>&1 | sed 's/^Traceback/FAIL Traceback/'
         else
             echo "SKIP onnxruntime # SKIP no var/ort-venv with onnxruntime (python3 -m venv var/ort-venv; var/ort-venv/bin/pip install onnxruntime)"
         fi)

# refused EXIT PATTERN WHAT ARGS...: one line, that exit, nothing written.
refused() {
    local want=$1 pat=$2 what=$3; shift 3
    rm -f "$root/out.st"
    jobctl export "$@" >/dev/null 2>"$root/err"
    local rc=$?
    ok "$([ $rc = "$want" ] && [ "$(wc -l <"$root/err")" = 1 ] && grep -q -- "$pat" "$root/err" && [ ! -e "$root/out.st" ] &&
          [ -z "$(ls "$root" | grep '\.tmp-')" ]; echo $?)" "$what is refused in one line, exit $rc, nothing written ($(head -1 "$root/err"))"
}
refused 2 "give --format safetensors or --format onnx" "--format pt" --ckpt "$root/cnn.ckpt" --format pt --out "$root/out.st"
refused 2 "give --format safetensors or --format onnx" "no --format" --ckpt "$root/cnn.ckpt" --out "$root/out.st"
refused 1 "no-such.ckpt" "a checkpoint that is not there" --ckpt "$root/no-such.ckpt" --format safetensors --out "$root/out.st"
head -c 2000 "$root/cnn.ckpt" >"$root/cut.ckpt"
refused 1 "cut.ckpt" "a truncated checkpoint" --ckpt "$root/cut.ckpt" --format safetensors --out "$root/out.st"
refused 1 "cut.ckpt" "a truncated checkpoint, to ONNX" --ckpt "$root/cut.ckpt" --format onnx --out "$root/out.st"
refused 1 "cannot write beside" "an --out in a directory that is not there" --ckpt "$root/cnn.ckpt" --format safetensors \
    --out "$root/no/dir/out.st"
cp "$root/mlp.safetensors" "$root/keep.st"
jobctl export --ckpt "$root/cnn.ckpt" --format safetensors --out "$root/mlp.safetensors" >/dev/null 2>"$root/err"
rc=$?
ok "$([ $rc = 1 ] && grep -q -- "--replace" "$root/err" && cmp -s "$root/keep.st" "$root/mlp.safetensors"; echo $?)" \
    "an existing --out is kept without --replace (exit $rc: $(head -1 "$root/err"))"
jobctl export --ckpt "$root/cnn.ckpt" --format safetensors --out "$root/mlp.safetensors" --replace >/dev/null 2>&1
ok "$([ $? = 0 ] && cmp -s "$root/cnn.safetensors" "$root/mlp.safetensors"; echo $?)" \
    "--replace writes over it, the same bytes as the first export of that checkpoint"

# Through a sweep: model 1's latest checkpoint ends epoch 2 (version 4 of
# K = 2) and is its best; the test scoring chose it.
mkdir -p "$root/sweeps/ex/models/1"
cp "$root/cnn.ckpt" "$root/sweeps/ex/models/1/v4-abc.ckpt"
rcli HSET "${prefix}sweep:{ex}" id ex state done models 2 shards 2 epochs 2 mode mop \
    test '{"model": 1, "epoch": 2, "top1": 0.5}' >/dev/null
rcli HSET "${prefix}sweep:{ex}:models" 1.version 4 1.ckpt "$root/sweeps/ex/models/1/v4-abc.ckpt" 1.best_epoch 2 \
    0.version 0 0.ckpt "" >/dev/null
jobctl export ex --format safetensors --out "$root/ex.st" >/dev/null 2>"$root/err"
ok "$([ $? = 0 ] && cmp -s "$root/ex.st" "$root/cnn.safetensors"; echo $?)" \
    "jobctl export SWEEP: the chosen model at its best epoch$([ -s "$root/err" ] && echo " ($(head -1 "$root/err"))")"
jobctl export ex/1@2 --format safetensors --out "$root/ex2.st" >/dev/null 2>&1
ok "$([ $? = 0 ] && cmp -s "$root/ex2.st" "$root/cnn.safetensors"; echo $?)" "jobctl export SWEEP/MODEL@EPOCH"
refused 1 "epoch 1 is gone" "an epoch whose checkpoint is not kept" ex/1@1 --format safetensors --out "$root/out.st"
refused 2 "has no model 5" "a model the sweep does not have" ex/5 --format safetensors --out "$root/out.st"
refused 1 "has no checkpoint yet" "a model that never committed" ex/0 --format safetensors --out "$root/out.st"
refused 2 "there is no sweep nosuch" "a sweep that does not exist" nosuch --format safetensors --out "$root/out.st"
rcli DEL "${prefix}sweep:{ex}" "${prefix}sweep:{ex}:models" >/dev/null
tap_done
