#!/usr/bin/env bash
# Re-creates every model shipped in weights/ from the ISIC folder, through the project's own CLI.
# CPU only; timings on the 2-core development machine are in docs/experiments.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/isic9}
PY=${PY:-.venv/bin/python}
SK="$PY -m skinapp"
STUDENT=(--epochs "${EPOCHS:-30}" --lr 3e-3 --batch-size 64 --threads 2)

# 1. Teacher: EfficientNet-Lite0 from ImageNet (offline package), one output per diagnosis.
$SK train-teacher --data "$DATA" --name teacher-lite0 --arch efficientnet_lite0 --head diagnosis \
    --epochs 12 --batch-size 32 --lr 1e-3 --threads 2 --default \
    --description "EfficientNet-Lite0, ImageNet init (offline package), 9-diagnosis head"
# 2. Default student: dsnet distilled from the teacher's per-diagnosis soft targets.
$SK distill --data "$DATA" --name dsnet-kd --teacher teacher-lite0 -T "${T_DEFAULT:-20}" --alpha "${ALPHA:-0.5}" \
    "${STUDENT[@]}" --default --description "DSNet distilled from teacher-lite0 (diagnosis head, T=20)"
# 3. The control: the same dsnet, same head and schedule, hard labels only.
$SK distill --data "$DATA" --name dsnet-nokd --no-kd --head diagnosis "${STUDENT[@]}" \
    --description "DSNet trained without distillation (control)"
# 4. Pretrained-architecture students (the paper's Table 2 idea). EfficientNet-Lite0 starts from the offline
#    ImageNet package and sees 112 px (a quarter of the teacher's pixels); MobileNetV3-Small has no offline
#    ImageNet weights here, so it starts from random weights.
$SK distill --data "$DATA" --name lite0-kd --arch efficientnet_lite0 --image-size 112 --pretrained package \
    --teacher teacher-lite0 -T "${T_DEFAULT:-20}" --alpha "${ALPHA:-0.5}" --epochs 15 --lr 1e-3 --batch-size 32 \
    --threads 2 --description "EfficientNet-Lite0 at 112 px, ImageNet init (offline package), distilled from teacher-lite0 (T=20)"
$SK distill --data "$DATA" --name mobilenetv3-kd --arch mobilenetv3_small_100 --teacher teacher-lite0 \
    -T "${T:-4}" --alpha "${ALPHA:-0.5}" --image-size 112 "${STUDENT[@]}" \
    --description "MobileNetV3-Small distilled from teacher-lite0 (T=4, 112 px); random init: no offline ImageNet weights exist for it here"
# 5. Half-precision copy of the default student (Karim et al. 2024).
$SK compress --model dsnet-kd --name dsnet-kd-fp16 --data "$DATA"
$SK models
