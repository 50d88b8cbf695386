"""Face tracking: portraits and driving videos → cameras + morphable-model coefficients.

- :mod:`~avatar4d.tracking.landmarks`: the landmark interface; the default detector is a small CNN
  trained on the procedural world (:mod:`~avatar4d.tracking.regressor`, shipped checkpoint).
- :mod:`~avatar4d.tracking.fitting`: batched Adam fitting of yaw/pitch/roll + translation, identity
  (shared across a video), expression and jaw to the landmarks, with temporal smoothing.
- :mod:`~avatar4d.tracking.media`: image/video reading and MP4 writing (PyAV, imported lazily).
- :mod:`~avatar4d.tracking.tracker` and :mod:`~avatar4d.tracking.output`: the whole tracker and its
  files (JSON per frame, overlay sheet/video); ``avatar4d track`` is the CLI.
"""

from avatar4d.tracking.fitting import FitConfig, FitResult, LandmarkFitter, project_landmarks
from avatar4d.tracking.landmarks import Detections, GroundTruthDetector, LandmarkDetector, RegressorDetector
from avatar4d.tracking.pose import CameraFraming, HeadPose, pose_camera
from avatar4d.tracking.tracker import Tracker, TrackResult

__all__ = ["CameraFraming", "Detections", "FitConfig", "FitResult", "GroundTruthDetector", "HeadPose",
           "LandmarkDetector", "LandmarkFitter", "RegressorDetector", "TrackResult", "Tracker", "pose_camera",
           "project_landmarks"]
