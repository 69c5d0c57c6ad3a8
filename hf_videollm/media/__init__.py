"""Media I/O and transforms: images, videos and audio into tensors, and the torch transforms the models' originals use.

Model processors (``hf_videollm.processors``) build on this package; nothing here knows about a model.

* ``image_io``: :func:`load_image` (Pillow decode, the originals' RGB conversion), pixel budget and aspect-ratio checks.
* ``video_read``: :func:`load_video` (PyAV, frames sampled by timestamp, seeking; optional torchcodec backend).
* ``audio``: :func:`load_audio` (first audio stream of a video or audio file, resampled); the audio front end of
  the audio-visual models in torch: :func:`kaldi_fbank`, :func:`resample_fft`, :func:`crop_or_pad`,
  :func:`clip_sample_waveform`.
* ``video_write``: :func:`write_video` (RGB frames, optionally a waveform, to a video file).
* ``container``: what reading video and audio share: the errors, opening a source with PyAV.
* ``frames``: :func:`~.frames.load_images` / :func:`~.frames.load_frames`, what processors call: any accepted form
  of an image or a video -> uint8 tensors, errors naming the item.
* ``transforms``: Pillow-exact resize, crop, pad, rescale, normalize as torch ops; :class:`ImageTransform`.
"""

from .audio import clip_sample_waveform, crop_or_pad, kaldi_fbank, load_audio, resample_fft
from .container import AudioDecodeError, BackendUnavailableError, VideoDecodeError
from .image_io import ImageLoadError, check_aspect_ratio, load_image
from .transforms import ImageTransform
from .video_read import DecodeStats, VideoMetadata, load_video, track_decoding
from .video_write import write_video

__all__ = [
    "AudioDecodeError",
    "BackendUnavailableError",
    "DecodeStats",
    "ImageLoadError",
    "ImageTransform",
    "VideoDecodeError",
    "VideoMetadata",
    "check_aspect_ratio",
    "clip_sample_waveform",
    "crop_or_pad",
    "kaldi_fbank",
    "load_audio",
    "load_image",
    "load_video",
    "resample_fft",
    "track_decoding",
    "write_video",
]
