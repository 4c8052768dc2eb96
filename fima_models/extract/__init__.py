"""Feature extraction with any fima_models backbone: one video from Python, many from the command line.

Modules, each one job (see ``docs/features.md``):

- :mod:`.api`: :func:`extract_features` and its result :class:`VideoFeatures`, the per-video
  :class:`FeatureAccumulator`, the recorded :func:`extraction_config`;
- :mod:`.clips`: clip planning (starts, padding rule), decoding clips, the evaluation transform;
- :mod:`.runner`: :func:`prepare_inference` and the :class:`FeatureRunner` it returns, pooling;
- :mod:`.crops`: multi-crop views (3 along the long side, 10 with flips), their boxes and transform;
- :mod:`.loading`: models by name or converted folder;
- :mod:`.storage`: feature files, sidecars, fingerprints, the output folder and its lock;
- many videos (``fima-models extract``): :mod:`.inputs` (files, folders, list files),
  :mod:`.workers` (decoding in DataLoader workers, exact batches), :mod:`.pipeline` (decode ->
  model -> save), :mod:`.summary` (``summary.json``), :mod:`.distributed` (torchrun),
  :mod:`.setup` and :mod:`.batch` (:func:`run_extraction`).
"""
from fima_models.extract.api import FeatureAccumulator, VideoFeatures, extract_features, extraction_config
from fima_models.extract.batch import ExtractionOutcome, run_extraction
from fima_models.extract.clips import build_transform, clip_frame_indices, clip_starts, read_clip, read_clips
from fima_models.extract.crops import CROP_COUNTS, CROP_POOLS, CropBox, MultiCropTransform, crop_boxes
from fima_models.extract.loading import load_model, model_name_of
from fima_models.extract.runner import LEVELS, POOLINGS, FeatureRunner, pool_maps, prepare_inference
from fima_models.extract.setup import ExtractionSettings
from fima_models.extract.storage import FORMATS, NonFiniteFeaturesError, load_features, read_sidecar, save_features

__all__ = [
    'extract_features', 'VideoFeatures', 'FeatureAccumulator', 'extraction_config', 'prepare_inference',
    'FeatureRunner', 'pool_maps', 'LEVELS', 'POOLINGS', 'clip_starts', 'clip_frame_indices', 'read_clip',
    'read_clips', 'build_transform', 'load_model', 'model_name_of', 'save_features', 'load_features',
    'read_sidecar', 'FORMATS', 'NonFiniteFeaturesError', 'ExtractionSettings', 'ExtractionOutcome',
    'run_extraction', 'CROP_COUNTS', 'CROP_POOLS', 'CropBox', 'MultiCropTransform', 'crop_boxes',
]
