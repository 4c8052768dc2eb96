"""Constants shared by the library, ``train/`` and ``hub/``: normalisation, file types, formats."""

__all__ = ['KINETICS_MEAN', 'KINETICS_STD', 'VIDEO_EXTENSIONS', 'TRAIN_CHECKPOINT_FORMAT', 'clip_span']

#: Normalisation used by FIMA and by torchvision's Kinetics-400 video models (RGB in [0, 1]).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

#: File suffixes taken as videos when a folder is searched (lower case).
VIDEO_EXTENSIONS = (
    '.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg', '.mpeg', '.flv', '.wmv', '.3gp', '.ogv', '.ts',
)

#: ``format`` field of the checkpoints ``python -m train`` writes (read back by ``fima_models.checkpoint``).
TRAIN_CHECKPOINT_FORMAT = 'fima-models-train'


def clip_span(clip_len: int, step: int = 1) -> int:
    """Frames a clip of ``clip_len`` frames taken every ``step`` frames covers, first to last.

    Args:
        clip_len: Frames in the clip.
        step: Distance between two consecutive clip frames in the video.

    Returns:
        ``(clip_len - 1) * step + 1``.
    """
    return (clip_len - 1) * step + 1
