"""Small private helpers every part of the project shares, each job in one place.

- :mod:`.atomic`: crash-safe file writing and the output-folder lock;
- :mod:`.errors`: one line of text for an exception;
- :mod:`.hardware`: device, the one precision vocabulary, channels-last;
- :mod:`.constants`: normalisation, video suffixes, the train-checkpoint format, the clip-span rule.

Nothing here imports another part of ``fima_models``: the rest of the library builds on it.
"""
from .atomic import (
    FolderLock, FolderLockedError, atomic_write, atomic_write_bytes, atomic_write_text, default_dir_mode,
    default_file_mode,
)
from .constants import KINETICS_MEAN, KINETICS_STD, TRAIN_CHECKPOINT_FORMAT, VIDEO_EXTENSIONS, clip_span
from .errors import describe_error, describe_os_error
from .hardware import (
    PRECISIONS, TRAINING_PRECISIONS, autocast_dtype, cpu_has_native_bf16, has_native_bf16, resolve_device,
    resolve_precision, to_channels_last_3d,
)

__all__ = [
    'FolderLock', 'FolderLockedError', 'atomic_write', 'atomic_write_bytes', 'atomic_write_text', 'default_dir_mode',
    'default_file_mode', 'KINETICS_MEAN', 'KINETICS_STD', 'TRAIN_CHECKPOINT_FORMAT', 'VIDEO_EXTENSIONS', 'clip_span',
    'describe_error', 'describe_os_error', 'PRECISIONS', 'TRAINING_PRECISIONS', 'autocast_dtype', 'cpu_has_native_bf16',
    'has_native_bf16', 'resolve_device', 'resolve_precision', 'to_channels_last_3d',
]
