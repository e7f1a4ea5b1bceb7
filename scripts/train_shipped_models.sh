#!/usr/bin/env bash
# Re-creates every model shipped in weights/ from the ISIC folder, through the project's own CLI.
# CPU only; timings on the 2-core development machine are in docs/experiments.md.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/isic9}
PY=${PY:-.venv/bin/python}
SK="$PY -m skinapp"
STUDENT=(--epochs "${EPOCHS:-30}" --lr 3e-3 --batch-size 64 --threads 2)

# 1. First member of the teacher: EfficientNet-Lite0 from ImageNet (offline package), one output per diagnosis.
$SK train-teacher --data "$DATA" --name teacher-lite0 --arch efficientnet_lite0 --head diagnosis \
    --epochs 12 --batch-size 32 --lr 1e-3 --threads 2 \
    --description "EfficientNet-Lite0, ImageNet init (offline package), 9-diagnosis head"
# 2. Second member, and the pretrained-architecture student of Table 2: EfficientNet-Lite0 from the offline
#    ImageNet package at 112 px (a quarter of the teacher's pixels), distilled from teacher-lite0.
$SK distill --data "$DATA" --name lite0-kd --arch efficientnet_lite0 --image-size 112 --pretrained package \
    --teacher teacher-lite0 -T "${T_DEFAULT:-20}" --alpha "${ALPHA:-0.5}" --epochs 15 --lr 1e-3 --batch-size 32 \
    --threads 2 --description "EfficientNet-Lite0 at 112 px, ImageNet init (offline package), distilled from teacher-lite0 (T=20)"
# 3. The default teacher: both fused (mean probability), each on the photo and its three flips; stored in
#    float16 (computed in float32) to keep weights/ under 60 MB. Nothing is trained here.
$SK fuse --members teacher-lite0,lite0-kd --name teacher-fused --data "$DATA" --views flips --dtype float16 \
    --default --description "teacher-lite0 and lite0-kd fused: mean probability over both and four flips of the photo"
# 4. The paper's student: dsnet (96 px, the architecture's default) distilled from the fused teacher's
#    per-diagnosis soft targets.
$SK distill --data "$DATA" --name dsnet-kd --arch dsnet --teacher teacher-fused -T "${T_DEFAULT:-20}" --alpha "${ALPHA:-0.5}" \
    "${STUDENT[@]}" --description "DSNet at 96 px distilled from teacher-fused (diagnosis head, T=20)"
# 5. Its control: the same dsnet, same head, size and schedule, hard labels only.
$SK distill --data "$DATA" --name dsnet-nokd --arch dsnet --no-kd --head diagnosis "${STUDENT[@]}" \
    --description "DSNet at 96 px trained without distillation (control)"
# 6. Default student: EfficientNet-Lite0 cut after its fourth stage (0.25M parameters, ImageNet init from the
#    offline package) at 96 px, distilled from the same teacher at the same T.
TINY=(--arch lite0_tiny --pretrained package --epochs "${TINY_EPOCHS:-20}" --lr 2e-3 --batch-size 32 --threads 2)
$SK distill --data "$DATA" --name lite0-tiny-kd --teacher teacher-fused -T "${T_DEFAULT:-20}" --alpha "${ALPHA:-0.5}" \
    "${TINY[@]}" --default \
    --description "EfficientNet-Lite0's ImageNet stem and first four stages at 96 px, distilled from teacher-fused (T=20)"
# 7. Its control: the same network, init, head and schedule, hard labels only.
$SK distill --data "$DATA" --name lite0-tiny-nokd --no-kd --head diagnosis "${TINY[@]}" \
    --description "lite0_tiny at 96 px trained without distillation (control for lite0-tiny-kd)"
# 8. A Table 2 student from random weights, distilled from the same teacher at 112 px and T = 4. MobileNetV3-Small
#    has no offline ImageNet weights here.
$SK distill --data "$DATA" --name mobilenetv3-kd --arch mobilenetv3_small_100 --teacher teacher-fused \
    -T "${T:-4}" --alpha "${ALPHA:-0.5}" --image-size 112 "${STUDENT[@]}" \
    --description "MobileNetV3-Small distilled from teacher-fused (T=4, 112 px); random init: no offline ImageNet weights exist for it here"
# 9. Half-precision copies of the default student and of the paper's student (Karim et al. 2024).
$SK compress --model lite0-tiny-kd --name lite0-tiny-kd-fp16 --data "$DATA"
$SK compress --model dsnet-kd --name dsnet-kd-fp16 --data "$DATA"
$SK models
