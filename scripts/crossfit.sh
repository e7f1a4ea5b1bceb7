#!/usr/bin/env bash
# A cross-fitted teacher: K EfficientNet-Lite0 fold teachers, each trained on the training split less one fold,
# fused so that distillation scores every training image with the one member that never saw it
# (docs/experiments.md, "A cross-fitted teacher"). Then its students and their matched no-KD controls.
# On a CUDA GPU (--device auto picks it up) the whole script takes minutes; on the 2-core CPU, hours.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/isic9}
PY=${PY:-.venv/bin/python}
SK="$PY -m skinapp --weights ${REG:-weights}"
K=${K:-5}
SEEDS=${SEEDS:-0 1 2}
DEV=(--device "${DEVICE:-auto}")
members=()
for ((k = 0; k < K; k++)); do
    $SK train-teacher --data "$DATA" --name "teacher-cf$k" --arch efficientnet_lite0 --head diagnosis \
        --folds "$K" --fold "$k" --epochs 12 --batch-size 32 --lr 1e-3 "${DEV[@]}" --overwrite \
        --description "EfficientNet-Lite0 (ImageNet init), 9-diagnosis head, trained without fold $k of $K"
    members+=("teacher-cf$k")
done
$SK fuse --members "$(IFS=,; echo "${members[*]}")" --name teacher-cf --crossfit --data "$DATA" --views flips \
    --dtype float16 --overwrite \
    --description "Cross-fitted: $K EfficientNet-Lite0 fold teachers over four flips; a training image is scored by the member trained without it"
TINY=(--arch lite0_tiny --pretrained package --epochs 20 --lr 2e-3 --batch-size 32 "${DEV[@]}" --overwrite)
for s in $SEEDS; do
    $SK distill --data "$DATA" --name "lite0-tiny-cf-s$s" --teacher teacher-cf -T "${T:-20}" --seed "$s" "${TINY[@]}"
    [[ -n "${CONTROLS:-1}" ]] && $SK distill --data "$DATA" --name "lite0-tiny-nokd-s$s" --no-kd --head diagnosis \
        --seed "$s" "${TINY[@]}"
done
$SK models
