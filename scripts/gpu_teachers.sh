#!/usr/bin/env bash
# The shipped teacher, on a CUDA GPU (about 5 minutes on one H100), through the project's own CLI:
# a fused EfficientNet-Lite0/1/2 teacher (Karim et al. 2024 fuse three networks) and, for comparison, one
# EfficientNet-Lite0 trained with the same recipe. The fused teacher is stored as float16 by `compress`,
# which also measures what the 16-bit weights cost. Usage: DATA=... REG=weights scripts/gpu_teachers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/isic9}
PY=${PY:-.venv/bin/python}
REG=${REG:-weights}
SK="$PY -m skinapp --weights $REG"
T_ARGS=(--data "$DATA" --head diagnosis --epochs "${TEACHER_EPOCHS:-40}" --batch-size 64 --lr 1e-3
        --device "${DEVICE:-cuda}" --threads 4)

$SK train-teacher --name teacher-fused-fp32 --arch fused_lite012 "${T_ARGS[@]}" --overwrite \
    --description "EfficientNet-Lite0/1/2 fused (mean probability), ImageNet init, 9-diagnosis head" &
$SK train-teacher --name teacher-lite0 --arch efficientnet_lite0 "${T_ARGS[@]}" --overwrite \
    --description "EfficientNet-Lite0, ImageNet init (offline package), 9-diagnosis head" &
wait
$SK compress --model teacher-fused-fp32 --name teacher-fused --data "$DATA" --overwrite
$SK models --set-default teacher-fused
