"""Frame-exact video reading with PyAV.

:class:`VideoReader` opens a file, indexes it once and serves clips by frame index::

    reader = VideoReader("clip.mp4")
    clip = reader.get_clip(start=10, clip_len=16, step=2)   # uint8 [16, H, W, 3] RGB, upright

Frame ``i`` is the ``i``-th picture a plain sequential decode of the file yields, whatever
the container's timestamps say (see :mod:`fima_models.video.index` for how each frame is
found). Clips are fetched by seeking to a keyframe at or before the first wanted frame and
decoding forward; what a seek lands on is identified by its keyframe picture and every
following picture's timestamp is checked against the index (:mod:`fima_models.video.decode`).

Robustness rules:

* Files whose timestamps cannot give the frame order (DivX packed B-frames, decode-order
  timestamps, missing or duplicate timestamps, leading non-key frames) are indexed by one
  decode pass when opened, logged once with the reason. A picture that comes out where the
  index does not expect it switches the reader to that decode-pass index (timestamp index)
  or to decoding from the start of the file (decode-pass index), logged once.
* Seek overshoot (the demuxer lands after the clip) is detected from the keyframe picture;
  the reader then seeks to an earlier keyframe, and as a last resort decodes from the start.
* A packet the demuxer flags as corrupt (a truncated file's final partial packet) ends the
  usable stream, so ``num_frames`` counts only frames that can be served.
* Decoder errors, pictures the decoder flags as corrupt, and wanted frames that never come
  out raise :class:`VideoDecodeError` naming the file and the reason; no frame is ever
  substituted silently.
* A display matrix (phone videos) is applied: frames come back upright and ``height`` /
  ``width`` describe them; ``rotate=False`` keeps the stored orientation.

With ``fps=...`` the reader resamples to a target frame rate: frame ``j`` is the source frame
shown at time ``j / fps`` (the latest source frame whose timestamp is at or before that time;
files with untrusted timestamps are taken as constant-rate).

:func:`probe_video` indexes a file exactly (demux and decode passes) and reports what the data
set index and ``fima-models check-videos`` show: decodable and claimed frames, rate, size,
codec, rotation and whether the fast timestamp path is exact. :func:`write_video` encodes
frames into a file.

Modules: :mod:`.reader` (the reader), :mod:`.index` (where each frame is), :mod:`.decode`
(seek, decode, verify), :mod:`.container` (opening the file), :mod:`.errors`,
:mod:`.probe`, :mod:`.writer`.
"""

from fima_models.video.errors import VideoDecodeError
from fima_models.video.index import FrameIndex
from fima_models.video.probe import VideoInfo, probe_video
from fima_models.video.reader import VideoReader
from fima_models.video.writer import write_video

__all__ = ["VideoReader", "VideoDecodeError", "VideoInfo", "FrameIndex", "probe_video", "write_video"]
