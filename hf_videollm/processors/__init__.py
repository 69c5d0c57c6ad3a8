"""Model processors: text and media of a sample -> the tensors a model takes, with one placeholder per media token.

* ``base``: :class:`~hf_videollm.processors.base.VideoLLMProcessor`, the shared contract (placeholders checked per
  sample, tokenization around them, chat templates, visual-token and length budgets).
* ``pixels``: ``FramePixelsMixin``, the image / video pixel path of models that see every frame as an image.
* ``llava``, ``videollama2``: one processor per model.
* ``chat_templates`` + ``templates/*.jinja``: the chat templates saved with a processor.

Loading and transforming media (``load_image``, ``load_video``, ``load_audio``, ``write_video``, ...) lives in
:mod:`hf_videollm.media`.
"""
