"""fima-models: video backbones pretrained with FIMA, as timm models on 5-D video.

>>> import fima_models
>>> model = fima_models.create_model('r2plus1d_18', num_classes=0)   # (N, 3, T, H, W) -> (N, 512)
"""
from fima_models._factory import MODEL_ALIASES, UnknownModelError, create_model, list_models, list_pretrained
from fima_models.extract import VideoFeatures, extract_features
from fima_models.models import PretrainedWeightsUnavailable

__version__ = '0.1.0'

__all__ = [
    'create_model', 'list_models', 'list_pretrained', 'MODEL_ALIASES', 'UnknownModelError',
    'extract_features', 'VideoFeatures', 'PretrainedWeightsUnavailable', '__version__',
]
