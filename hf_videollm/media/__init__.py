"""Media I/O and transforms: images, videos and audio into tensors, and the torch transforms the models' originals use.

Model processors (``hf_videollm.processors``) build on this package; nothing here knows about a model.
"""

from .image_io import ImageLoadError, check_aspect_ratio, load_image

__all__ = ["ImageLoadError", "check_aspect_ratio", "load_image"]
