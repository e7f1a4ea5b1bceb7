#!/usr/bin/env bash
# A stronger teacher for a machine with a CUDA GPU, through the project's own CLI: EfficientNet-Lite0/1/2
# fused by mean probability (Karim et al. 2024 fuse three networks), each member trained on its own loss, and
# for comparison one EfficientNet-Lite0 on the same recipe. The fused teacher is stored as float16 by
# `compress`, which also measures what the 16-bit weights cost. It runs on a CPU too (DEVICE=cpu), but there
# 40 epochs of three networks take many hours, so the teacher shipped today is `fuse` of two already trained
# networks (scripts/train_shipped_models.sh step 3).
# Usage: DATA=... REG=weights scripts/train_fused_teacher.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/isic9}
PY=${PY:-.venv/bin/python}
REG=${REG:-weights}
SK="$PY -m skinapp --weights $REG"
T_ARGS=(--data "$DATA" --head diagnosis --epochs "${TEACHER_EPOCHS:-40}" --batch-size 64 --lr 1e-3
        --device "${DEVICE:-auto}" --threads 4)

$SK train-teacher --name teacher-lite012-fp32 --arch fused_lite012 "${T_ARGS[@]}" --overwrite \
    --description "EfficientNet-Lite0/1/2 fused (mean probability), ImageNet init, 9-diagnosis head" &
$SK train-teacher --name teacher-lite0-long --arch efficientnet_lite0 "${T_ARGS[@]}" --overwrite \
    --description "EfficientNet-Lite0, ImageNet init (offline package), 9-diagnosis head" &
wait
$SK compress --model teacher-lite012-fp32 --name teacher-lite012 --data "$DATA" --overwrite
$SK models --set-default teacher-lite012
