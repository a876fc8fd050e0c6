"""Real videos / image folders -> a training set (docs/preprocess.md): tracking, head pose, crops, masks,
expression codes, identity codes, gaze. The heavy detectors (mediapipe, OpenCV) are imported lazily, so
the geometry here works with the base install."""
