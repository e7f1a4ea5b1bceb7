#!/usr/bin/env bash
# EfficientNet-Lite0/1/2 trained jointly as one model (--arch fused_lite012: one shared 224 px input, each member
# on its own loss) for 40 epochs, and for comparison one EfficientNet-Lite0 on the same recipe; for a machine
# with a CUDA GPU. The fused teacher is stored as float16 by `compress`, which also measures what the 16-bit
# weights cost. Not how the shipped teacher was made: `teacher-lite012` fuses three separately trained
# networks, each at its own input size (scripts/train_shipped_models.sh steps 2-3). Never run to the end yet.
# Usage: DATA=... REG=weights scripts/train_fused_teacher.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/isic9}
PY=${PY:-.venv/bin/python}
REG=${REG:-weights}
SK="$PY -m skinapp --weights $REG"
T_ARGS=(--data "$DATA" --head diagnosis --epochs "${TEACHER_EPOCHS:-40}" --batch-size 64 --lr 1e-3
        --device "${DEVICE:-auto}" --threads 4)

$SK train-teacher --name teacher-lite012-joint-fp32 --arch fused_lite012 "${T_ARGS[@]}" --overwrite \
    --description "EfficientNet-Lite0/1/2 fused (mean probability), ImageNet init, 9-diagnosis head" &
$SK train-teacher --name teacher-lite0-long --arch efficientnet_lite0 "${T_ARGS[@]}" --overwrite \
    --description "EfficientNet-Lite0, ImageNet init (offline package), 9-diagnosis head" &
wait
$SK compress --model teacher-lite012-joint-fp32 --name teacher-lite012-joint --data "$DATA" --overwrite
