"""Media I/O, transforms and the model processors."""

from ..media import VideoDecodeError, VideoMetadata, load_audio, load_video, write_video
from ..media.image_io import ImageLoadError, load_image

__all__ = ["ImageLoadError", "VideoDecodeError", "VideoMetadata", "load_audio", "load_image", "load_video", "write_video"]
