"""hf_videollm: Hugging Face-native video LLMs.

``import hf_videollm`` registers every model with ``AutoConfig``, ``AutoModel``, ``AutoModelForImageTextToText`` and
``AutoProcessor``, so checkpoints saved by this package load with the Auto classes. Every model's classes are
exported here from its entry in :data:`MODELS` (``hf_videollm.registry``), the one place a model is added.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .modeling import MediaMismatchError, VideoLLMPreTrainedModel  # noqa: E402
from .modeling.contract import InputSpec, Modality, ModelInputs  # noqa: E402
from .registry import MODELS, register_all  # noqa: E402

register_all()

_CLASSES = {
    cls.__name__: cls
    for entry in MODELS.values()
    for cls in (entry.config_class, entry.model_class, entry.base_model_class, entry.processor_class)
}
globals().update(_CLASSES)

__all__ = [
    "MODELS",
    "InputSpec",
    "MediaMismatchError",
    "Modality",
    "ModelInputs",
    "VideoLLMPreTrainedModel",
    *sorted(_CLASSES),
]
