#!/usr/bin/env bash
# Students distilled "patiently" (Beyer et al. 2022), for a machine with a CUDA GPU: the teacher runs on every
# batch (no cache), so over 300 epochs teacher and student agree on 300 fresh augmentations of each image.
# The no-KD controls get the very same schedule and augmentation. Needs a teacher, e.g. from
# train_fused_teacher.sh. Too slow for a 2-core CPU (the teacher's forward pass on every batch).
# Usage: DATA=... REG=weights TEACHER=teacher-lite012 scripts/distill_patient.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/isic9}
PY=${PY:-.venv/bin/python}
REG=${REG:-weights}
SK="$PY -m skinapp --weights $REG"
TEACHER=${TEACHER:-teacher-lite012}
S=(--data "$DATA" --arch dsnet --lr 3e-3 --batch-size 64 --device "${DEVICE:-auto}" --threads 2 --overwrite)
PATIENT=(--epochs "${PATIENT_EPOCHS:-300}" --teacher-views 0)
KD=(--teacher "$TEACHER" -T "${T_DEFAULT:-20}" --alpha "${ALPHA:-0.5}")

$SK distill --name dsnet-kd-patient "${KD[@]}" "${S[@]}" "${PATIENT[@]}" \
    --description "DSNet distilled from $TEACHER (diagnosis head, T=${T_DEFAULT:-20}, patient schedule)" &
$SK distill --name dsnet-nokd-patient --no-kd --head diagnosis "${S[@]}" "${PATIENT[@]}" \
    --description "DSNet without distillation (control: same schedule and augmentation)" &
$SK distill --name dsnet-kd-patient-mixup "${KD[@]}" --mixup 0.4 "${S[@]}" "${PATIENT[@]}" \
    --description "DSNet distilled from $TEACHER with mixup (the teacher labels every mixed image)" &
$SK distill --name dsnet-nokd-patient-mixup --no-kd --head diagnosis --mixup 0.4 "${S[@]}" "${PATIENT[@]}" \
    --description "DSNet without distillation, with mixup (control for dsnet-kd-patient-mixup)" &
$SK distill --name mobilenetv3-kd-patient --arch mobilenetv3_small_100 --image-size 160 "${KD[@]}" "${S[@]}" \
    --epochs "${PRETRAINED_EPOCHS:-100}" --teacher-views 0 \
    --description "MobileNetV3-Small (ImageNet-free init) distilled from $TEACHER" &
wait
