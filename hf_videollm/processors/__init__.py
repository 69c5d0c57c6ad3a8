"""Media I/O, transforms and the model processors."""

from ..media.image_io import ImageLoadError, load_image
from .video_io import VideoDecodeError, VideoMetadata, load_audio, load_video, write_video

__all__ = ["ImageLoadError", "VideoDecodeError", "VideoMetadata", "load_audio", "load_image", "load_video", "write_video"]
