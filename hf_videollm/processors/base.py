"""The shared processor: text + media -> model inputs, with placeholders expanded to the exact token counts.

A model processor subclasses :class:`VideoLLMProcessor`, names its model's input declaration (``input_spec``, the
same :class:`~hf_videollm.modeling.contract.ModelInputs` object the model carries), declares its settings, and
implements ``_process_<modality>s`` (tensors + the tokens each item becomes, computed with the model's formula).
``__call__`` then runs four stages, each a method:

1. :meth:`_scan` -- find the placeholders (``<image>``, ``<video>``, ...) in each text and check them against the media
   given, per sample, before anything heavy runs;
2. :meth:`_process_media` -- media -> tensors and, per item, its token layout: a count, or ``(modality, count)``
   segments when one slot holds several modalities' tokens (e.g. a video's tokens then its audio's);
3. :meth:`_build_row` -- token ids per sample: the text between placeholders tokenized chunk by chunk (as the
   original LLaVA-family code does; or in one piece, ``tokenization="whole"``, as transformers' processors do), one
   placeholder id per media token via :meth:`_expand` (never through the tokenizer, so ids may lie outside the
   vocabulary), media before the special prefix when the model places them there (BLIP-2), the visual-token budget
   and ``max_length`` enforced without ever cutting a media span; :meth:`_text_inputs` adds text-derived inputs (e.g.
   a second tokenizer's ids);
4. :meth:`_pad` -- padding (side from the tokenizer), labels (decoder-only: aligned with the prompt; encoder-decoder:
   the last assistant turn becomes the decoder sequence).

Settings are declared once per class (``settings = {name: default}``, merged along the MRO): the constructor, the
saved ``processor_config.json`` and ``from_pretrained`` all come from that table, so processors that share settings
(e.g. every frame-based pixel path, :class:`~hf_videollm.processors.pixels.FramePixelsMixin`) do not repeat them.

Placeholders typed by a user inside chat messages are text: :meth:`apply_chat_template` escapes them (and the
tokenizer's special tokens) in user content, and they are encoded as ordinary characters. In the raw
``processor(text=...)`` call the placeholder strings are placeholders (the transformers convention); wrap literal
text with :meth:`escape_text` there.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import BatchFeature, ProcessorMixin

from ..modeling.contract import ModelInputs, _batch_items

__all__ = ["VideoLLMProcessor", "ProcessorInputError", "ESCAPE_OPEN", "ESCAPE_CLOSE", "Sample", "Row"]

# Private-use characters marking a literal (escaped) control string inside text.
ESCAPE_OPEN = "\ue000"
ESCAPE_CLOSE = "\ue001"
# Markers around assistant text rendered inside ``{% generation %}`` blocks (used for training labels).
GENERATION_OPEN = "\ue002"
GENERATION_CLOSE = "\ue003"
_ESCAPED = re.compile(f"{ESCAPE_OPEN}(.*?){ESCAPE_CLOSE}", re.S)
#: every private-use character the processor uses as a marker; user-supplied chat text may not contain them.
_MARKERS = re.compile("[\ue000-\ue003]")
_DEFAULT_TOKENS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}


class ProcessorInputError(ValueError):
    """Inputs to a processor that cannot be turned into valid model inputs."""


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


@dataclass
class Sample:
    """One text of the batch after :meth:`VideoLLMProcessor._scan`."""

    index: int
    segments: list[tuple[str, str]]  # ("text", s) or (modality, "") in order
    items: dict[str, list[int]] = field(default_factory=dict)  # modality -> indices of its items in the batch

    @property
    def text(self) -> str:
        """The sample's text without its placeholders."""
        return "".join(s for kind, s in self.segments if kind == "text")


@dataclass
class Row:
    """Token ids of one sample, with the supervised flag of each id and the spans of media tokens."""

    ids: list[int]
    supervised: list[bool]
    media_spans: list[tuple[int, int]]
    media_tokens: int


class VideoLLMProcessor(ProcessorMixin):
    """Base processor. Subclasses set ``input_spec`` and ``settings`` and implement the media hooks."""

    #: the model's input declaration (same object as ``Model.input_spec``).
    input_spec: ClassVar[ModelInputs]
    #: tokenizer attributes, in constructor order (InstructBLIP adds a ``qformer_tokenizer``).
    tokenizer_attributes: ClassVar[tuple[str, ...]] = ("tokenizer",)
    #: settings of this class: name -> default. Merged along the MRO (subclasses override defaults); every setting
    #: is a constructor argument, an attribute and an entry of ``processor_config.json``.
    settings: ClassVar[dict[str, Any]] = {"max_visual_tokens": None, "tokenization": "chunks"}
    _all_settings: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        spec = getattr(cls, "input_spec", None)
        if spec is None:
            return  # a mixin-only intermediate class
        merged: dict[str, Any] = {}
        for modality in spec.modality_names:
            merged[f"{modality}_token"] = _DEFAULT_TOKENS.get(modality, f"<{modality}>")
            merged[f"{modality}_token_id"] = None
        for klass in reversed(cls.__mro__):
            merged.update(klass.__dict__.get("settings", {}))
        cls._all_settings = merged
        cls.__init__ = _make_init(cls.tokenizer_attributes, merged)

    def _setup(self, values: dict[str, Any]) -> None:
        """The body of the generated constructor: settings, then ProcessorMixin (tokenizers, chat template)."""
        for name in self._all_settings:
            setattr(self, name, copy.deepcopy(values[name]))
        self._check_settings()
        template = values["chat_template"] or self.default_chat_template()
        ProcessorMixin.__init__(self, *(values[a] for a in self.tokenizer_attributes), chat_template=template)

    def _check_settings(self) -> None:
        """Validate settings (subclasses extend; call ``super()``)."""
        if self.tokenization not in ("chunks", "whole"):
            raise ValueError("tokenization must be 'chunks' (original LLaVA-family code) or 'whole' (transformers)")

    def default_chat_template(self) -> str | None:
        """The chat template when none is given (subclasses return the original's)."""
        return None

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.input_spec.modality_names

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers', plus the model's code and ``auto_map`` so ``AutoProcessor`` loads it with
        ``trust_remote_code=True`` where hf_videollm is not installed (:mod:`hf_videollm.remote_code`)."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        try:  # absent where this module runs as remote code (transformers alone): the folder it came from has the code
            from hf_videollm.remote_code import add_processor_auto_map, entry_for, write_remote_code
        except ImportError:
            return out
        entry = entry_for(self)
        if entry is not None:
            write_remote_code(save_directory, entry)
            add_processor_auto_map(save_directory, entry)
        return out

    # -------------------------------------------------------------------------------------- token bookkeeping
    def media_token(self, modality: str) -> str:
        return getattr(self, f"{modality}_token")

    def media_token_id(self, modality: str) -> int:
        return getattr(self, f"{modality}_token_id")

    def escape_text(self, text: str) -> str:
        """Mark every placeholder string and special token in ``text`` as literal text."""
        controls = {self.media_token(m) for m in self.modalities}
        controls |= {t for t in getattr(self.tokenizer, "all_special_tokens", []) if t}
        controls = sorted((c for c in controls if c), key=len, reverse=True)
        if not controls or not text:
            return text
        pattern = re.compile("|".join(re.escape(c) for c in controls))
        return pattern.sub(lambda m: f"{ESCAPE_OPEN}{m.group(0)}{ESCAPE_CLOSE}", text)

    def _placeholder_regex(self) -> re.Pattern:
        alts = sorted(((m, self.media_token(m)) for m in self.modalities), key=lambda mt: len(mt[1]), reverse=True)
        return re.compile("|".join(f"(?P<{m}>{re.escape(t)})" for m, t in alts))

    # -------------------------------------------------------------------------------------- hooks
    def _process_images(self, images: list) -> tuple[dict[str, Any], list]:
        raise ProcessorInputError(f"{type(self).__name__} does not take images")

    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list]:
        raise ProcessorInputError(f"{type(self).__name__} does not take videos")

    def _process_audios(self, audios: list) -> tuple[dict[str, Any], list]:
        raise ProcessorInputError(f"{type(self).__name__} does not take audio")

    def _split_item(self, modality: str, item: Any) -> tuple[Any, list[tuple[str, Any]]]:
        """One media item -> (the item its ``_process_<modality>s`` takes, items it carries: ``(modality, source)``).

        A carried item (e.g. a video's own audio track) is processed with the items of its modality and its tokens
        follow the host's tokens inside the host's slot. Default: nothing carried."""
        return item, []

    def _expand(self, modality: str, tokens: int | Sequence[tuple[str, int]]) -> list[int]:
        """Token ids that replace one placeholder of ``modality``: ``tokens`` ids of its placeholder, or, for an item
        whose slot holds several modalities' tokens, each ``(modality, count)`` segment in order."""
        if isinstance(tokens, int):
            return [self.media_token_id(modality)] * tokens
        return [tid for m, n in tokens for tid in [self.media_token_id(m)] * n]

    def _text_inputs(self, samples: list[Sample], rows: list[Row]) -> dict[str, list]:
        """Text-derived inputs the model declares (``InputSpec(text=True)``): name -> one id list (or tensor) per
        sample (or per item, for per-item inputs). Batched here by the declaration's collate rule."""
        return {}

    # -------------------------------------------------------------------------------------- tokenization
    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """Ids the tokenizer adds before / after a text with ``add_special_tokens=True`` (e.g. BOS, or T5's EOS).

        Computed once per tokenizer state (this runs for every sample in training)."""
        key = (id(self.tokenizer), len(self.tokenizer))
        cached = self.__dict__.get("_affix_cache")
        if cached is None or cached[0] != key:
            self.__dict__["_affix_cache"] = cached = (key, self._find_special_affixes())
        return cached[1]

    def _find_special_affixes(self) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        plain = tok("a", add_special_tokens=False)["input_ids"]
        full = tok("a", add_special_tokens=True)["input_ids"]
        for i in range(len(full) - len(plain) + 1):
            if full[i : i + len(plain)] == plain:
                return full[:i], full[i + len(plain) :]
        return [], []

    def _placeholder_token_ids(self) -> dict[int, str]:
        """Tokenizer id of each placeholder string (``tokenization="whole"`` needs them in the tokenizer)."""
        out = {}
        for m in self.modalities:
            token = self.media_token(m)
            ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ProcessorInputError(
                    f"tokenization='whole' needs {token!r} to be a single token of the tokenizer (got {ids}); "
                    f"add it with tokenizer.add_tokens([{token!r}], special_tokens=True) or use tokenization='chunks'"
                )
            out[ids[0]] = m
        return out

    def _encode_text(self, text: str, state: dict | None = None) -> tuple[list[int], list[bool]]:
        """Tokenize ``text`` without special affixes -> (ids, supervised flag per id).

        Escaped spans are encoded as literal characters. Text between ``{% generation %}`` markers is supervised
        (flags from the tokenizer's character offsets, so tokenization is the same as without markers); ``state``
        carries an open generation block across calls for one sample.
        """
        state = state if state is not None else {"open": False}
        ids: list[int] = []
        flags: list[bool] = []
        pos = 0
        for m in _ESCAPED.finditer(text):
            if m.start() > pos:
                self._encode_plain(text[pos : m.start()], state, ids, flags)
            literal = self.tokenizer(m.group(1), add_special_tokens=False, split_special_tokens=True)["input_ids"]
            ids += literal
            flags += [state["open"]] * len(literal)
            pos = m.end()
        if pos < len(text):
            self._encode_plain(text[pos:], state, ids, flags)
        return ids, flags

    def _encode_plain(self, text: str, state: dict, ids: list[int], flags: list[bool]) -> None:
        if GENERATION_OPEN not in text and GENERATION_CLOSE not in text:
            out = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += out
            flags += [state["open"]] * len(out)
            return
        # Strip the markers, remembering which characters are supervised.
        clean, sup = [], []
        for ch in text:
            if ch == GENERATION_OPEN:
                state["open"] = True
            elif ch == GENERATION_CLOSE:
                state["open"] = False
            else:
                clean.append(ch)
                sup.append(state["open"])
        clean_text = "".join(clean)
        enc = self.tokenizer(clean_text, add_special_tokens=False, return_offsets_mapping=True)
        for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
            ids.append(tid)
            span = sup[start:end] if end > start else sup[min(start, len(sup) - 1) : min(start, len(sup) - 1) + 1]
            flags.append(bool(span) and any(span))

    # -------------------------------------------------------------------------------------- main entry point
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Any = None,
        videos: Any = None,
        audio: Any = None,
        *,
        padding: bool | str = True,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = "pt",
        padding_side: str | None = None,
        return_labels: bool = False,
        **kwargs: Any,
    ) -> BatchFeature:
        """Text (+ media) -> ``input_ids``, ``attention_mask``, the model's declared inputs (and ``labels``).

        ``labels`` (``return_labels=True``) supervise only text rendered inside ``{% generation %}`` blocks of the
        chat template (assistant turns, end-of-turn token included); everything else is -100. For an
        encoder-decoder model the last assistant turn becomes the decoder sequence (``labels``) and the rest the
        encoder input.
        """
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)} for {type(self).__name__}")
        if return_tensors not in ("pt", None):
            raise ProcessorInputError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or None")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0):
            raise ProcessorInputError(f"max_length must be a positive integer or None, got {max_length!r}")
        given, groups = {}, {}
        for modality, value in (("image", images), ("video", videos), ("audio", audio)):
            given[modality], groups[modality] = _flatten_media(value, modality)
        samples = self._scan(text, given)
        self._check_groups(samples, groups)
        features, tokens = self._process_media(given)
        cursor = dict.fromkeys(self.modalities, 0)
        rows = [
            self._build_row(s, tokens, cursor, add_special_tokens=add_special_tokens, max_length=max_length,
                            truncation=truncation)
            for s in samples
        ]
        data: dict[str, Any] = dict(features)
        for name, values in self._text_inputs(samples, rows).items():
            data[name] = _batch_items(self.input_spec[name], [torch.as_tensor(v) for v in values])
        data.update(self._pad(rows, padding=padding, max_length=max_length, padding_side=padding_side,
                              return_tensors=return_tensors, return_labels=return_labels))
        return BatchFeature(data=data)

    def _scan(self, text: str | Sequence[str] | None, given: dict[str, list]) -> list[Sample]:
        """Stage 1: placeholders per sample, checked against the media given (before any decoding work)."""
        if text is None:
            raise ProcessorInputError("text is required (it carries the placeholders that say where media go)")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ProcessorInputError("text must be a string or a non-empty list of strings")
        for modality, items in given.items():
            if items and modality not in self.modalities:
                raise ProcessorInputError(f"{type(self).__name__} does not take {modality} inputs")
        regex = self._placeholder_regex()
        samples, seen = [], dict.fromkeys(self.modalities, 0)
        for i, t in enumerate(texts):
            segs, items, pos = [], {m: [] for m in self.modalities}, 0
            for m in regex.finditer(_mask_escaped(t)):
                segs.append(("text", t[pos : m.start()]))
                segs.append((m.lastgroup, ""))
                items[m.lastgroup].append(seen[m.lastgroup])
                seen[m.lastgroup] += 1
                pos = m.end()
            segs.append(("text", t[pos:]))
            samples.append(Sample(i, segs, items))
        for modality in self.modalities:
            n_text, n_media = seen[modality], len(given[modality])
            if n_text != n_media:
                token = self.media_token(modality)
                counts = [len(s.items[modality]) for s in samples]
                hint = (
                    f"add one {token} per {modality} where it belongs in the text"
                    if n_text < n_media
                    else f"pass one {modality} per {token}, or escape literal text with processor.escape_text()"
                )
                raise ProcessorInputError(
                    f"the text has {n_text} {token} placeholder(s) (per sample: {counts}) but {n_media} "
                    f"{modality}(s) were given; {hint}"
                )
        self._attach_carried(samples, given)
        return samples

    def _check_groups(self, samples: list[Sample], groups: dict[str, list[int] | None]) -> None:
        """Media given nested per sample (``images=[[a, b], [c]]``) must match each sample's placeholders: the
        groups say which sample each item belongs to, so a mismatch would silently give one sample another's media."""
        for modality, sizes in groups.items():
            if sizes is None or modality not in self.modalities:
                continue
            # placeholders the user typed (items carried inside another item, e.g. a video's audio, do not count)
            counts = [sum(k == modality and t != "carried" for k, t in s.segments) for s in samples]
            if len(sizes) != len(samples) or sizes != counts:
                token = self.media_token(modality)
                raise ProcessorInputError(
                    f"{modality}s were given per sample as {len(sizes)} group(s) of sizes {sizes}, but the "
                    f"{len(samples)} text(s) have {counts} {token} placeholder(s) per sample; give each sample's "
                    f"{modality}s in its own list, one per {token} in that sample's text (or pass a flat list in "
                    f"placeholder order)"
                )

    def _attach_carried(self, samples: list[Sample], given: dict[str, list]) -> None:
        """Items carried by other items (:meth:`_split_item`) join their modality's list in the order their tokens
        appear over the batch, each as a ``(modality, "carried")`` segment right after its host (in place)."""
        originals = {m: list(given[m]) for m in self.modalities}
        taken = dict.fromkeys(self.modalities, 0)
        new_given: dict[str, list] = {m: [] for m in self.modalities}
        for sample in samples:
            segments, items = [], {m: [] for m in self.modalities}
            for kind, text in sample.segments:
                if kind == "text":
                    segments.append((kind, text))
                    continue
                host, carried = self._split_item(kind, originals[kind][taken[kind]])
                taken[kind] += 1
                items[kind].append(len(new_given[kind]))
                new_given[kind].append(host)
                segments.append((kind, ""))
                for cm, src in carried:
                    if cm not in self.modalities:
                        raise ProcessorInputError(f"a {kind} item carries {cm}, which {type(self).__name__} does not take")
                    items[cm].append(len(new_given[cm]))
                    new_given[cm].append(src)
                    segments.append((cm, "carried"))
            sample.segments, sample.items = segments, items
        given.update(new_given)

    def _process_media(self, given: dict[str, list]) -> tuple[dict[str, Any], dict[str, list]]:
        """Stage 2: each modality's items -> tensors (the model's declared inputs) + the token layout of each item."""
        features: dict[str, Any] = {}
        tokens: dict[str, list] = {}
        for modality in self.modalities:
            items = given[modality]
            if not items:
                continue
            data, counts = getattr(self, f"_process_{modality}s")(items)
            if len(counts) != len(items):
                raise RuntimeError(f"{type(self).__name__} returned {len(counts)} token counts for {len(items)} {modality}s")
            undeclared = sorted(set(data) - set(self.input_spec.names))
            if undeclared:
                raise RuntimeError(f"{type(self).__name__} emitted {undeclared}, which the model does not declare")
            features.update(data)
            tokens[modality] = counts
        return features, tokens

    def _build_row(
        self, sample: Sample, tokens: dict[str, list], cursor: dict[str, int], *, add_special_tokens: bool,
        max_length: int | None, truncation: bool,
    ) -> Row:
        """Stage 3: one sample's token ids (media expanded, placed inline or before the special prefix)."""
        prefix, suffix = self._special_affixes() if add_special_tokens else ([], [])
        state = {"open": False}
        if self.tokenization == "whole":
            # transformers' convention: tokenize the whole prompt with the placeholder tokens in place.
            placeholder_ids = self._placeholder_token_ids()
            text_ids, text_sup = self._encode_text(
                "".join(s if k == "text" else self.media_token(k) for k, s in sample.segments), state
            )
            pieces = [
                ("media", placeholder_ids[t], False) if t in placeholder_ids else ("id", t, f)
                for t, f in zip(text_ids, text_sup)
            ]
        else:
            # the original LLaVA-family convention: tokenize the text between placeholders chunk by chunk.
            pieces = []
            for kind, s in sample.segments:
                if kind == "text":
                    t_ids, t_sup = self._encode_text(s, state)
                    pieces += [("id", t, f) for t, f in zip(t_ids, t_sup)]
                else:
                    pieces.append(("media", kind, False))
        media_first = self.input_spec.placement == "prefix"
        ids, sup, spans, visual = [], [], [], 0
        media: list[int] = []  # prefix placement: every media run, in order, before the special prefix
        if not media_first:
            ids, sup = list(prefix), [False] * len(prefix)
        for what, value, flag in pieces:
            if what == "id":
                ids.append(value)
                sup.append(flag)
                continue
            item_tokens = tokens[value][cursor[value]]
            cursor[value] += 1
            expanded = self._expand(value, item_tokens)
            visual += len(expanded)
            if media_first:
                media += expanded
            else:
                spans.append((len(ids), len(ids) + len(expanded)))
                ids += expanded
                sup += [False] * len(expanded)
        if media_first:
            spans = [(0, len(media))] if media else []
            ids = media + list(prefix) + ids
            sup = [False] * (len(media) + len(prefix)) + sup
        ids += suffix
        sup += [False] * len(suffix)
        budget = self.max_visual_tokens
        if budget is not None and visual > budget:
            raise ProcessorInputError(
                f"sample {sample.index} needs {visual} media tokens, over the budget max_visual_tokens={budget}; use "
                f"fewer frames/images (num_frames, fps), or raise processor.max_visual_tokens if the model's context allows"
            )
        if max_length is not None and len(ids) > max_length:
            cut_media = any(end > max_length for _, end in spans)
            if not truncation or cut_media:
                why = "truncating would cut a media span" if truncation and cut_media else "truncation is off"
                raise ProcessorInputError(
                    f"sample {sample.index} is {len(ids)} tokens long (media tokens: {visual}), over "
                    f"max_length={max_length}, and {why}; shorten the text, use fewer frames/images, or raise max_length"
                )
            ids, sup = ids[:max_length], sup[:max_length]
        return Row(ids, sup, spans, visual)

    def _split_decoder(self, row: Row) -> tuple[list[int], list[int]]:
        """Encoder-decoder labels: the last supervised span (the last assistant turn) + the special suffix (EOS)
        become the decoder sequence; the rest, with the suffix, the encoder input."""
        _, suffix = self._special_affixes()
        sup = row.supervised
        if not any(sup):
            return row.ids, []
        end = max(i for i, f in enumerate(sup) if f) + 1
        start = end
        while start > 0 and sup[start - 1]:
            start -= 1
        body = row.ids[: len(row.ids) - len(suffix)] if suffix and row.ids[-len(suffix):] == suffix else row.ids
        return body[:start] + suffix, row.ids[start:end] + suffix

    def _pad(self, rows: list[Row], *, padding, max_length, padding_side, return_tensors, return_labels) -> dict:
        """Stage 4: pad the rows (and the labels) into a batch."""
        side = padding_side or getattr(self.tokenizer, "padding_side", "right")
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        if self.input_spec.lm == "seq2seq":
            pairs = [self._split_decoder(r) for r in rows]
            inputs, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            inputs = [r.ids for r in rows]
            labels = [[t if f else -100 for t, f in zip(r.ids, r.supervised)] for r in rows]
        width = self._pad_width(inputs, padding, max_length, return_tensors)
        out = {
            "input_ids": [_pad_list(r, width, pad_id, side) for r in inputs],
            "attention_mask": [_pad_list([1] * len(r), width, 0, side) for r in inputs],
        }
        if return_labels:
            if self.input_spec.lm == "seq2seq":  # decoder sequences: their own length, right-padded
                label_width = self._pad_width(labels, True if padding else False, None, return_tensors)
                out["labels"] = [_pad_list(r, label_width, -100, "right") for r in labels]
            else:
                out["labels"] = [_pad_list(r, width, -100, side) for r in labels]
        if return_tensors == "pt":
            out = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        return out

    @staticmethod
    def _pad_width(rows: list[list[int]], padding, max_length, return_tensors) -> int | None:
        if padding == "max_length":
            if max_length is None:
                raise ProcessorInputError("padding='max_length' needs max_length")
            return max_length
        if not padding and len({len(r) for r in rows}) > 1:
            if return_tensors is not None:
                raise ProcessorInputError("texts have different lengths; pass padding=True to batch them as tensors")
            return None
        return max((len(r) for r in rows), default=0)

    # -------------------------------------------------------------------------------------- chat
    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        chat_template: str | None = None,
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        placeholders_in_text: bool = False,
        images: Any = None,
        videos: Any = None,
        audio: Any = None,
        **kwargs: Any,
    ):
        """Render chat ``messages`` with the model's template.

        Content may be a string or a list of parts ``{"type": "text", "text": ...}``, ``{"type": "image"}``,
        ``{"type": "video"}``, ``{"type": "audio"}`` (optionally with ``"image"``/``"video"``/``"audio"``/``"path"``/
        ``"url"`` holding the media; other keys are per-item options passed with it as ``{kind: source, **options}``,
        e.g. ``{"type": "video", "path": "clip.mp4", "with_audio": True}`` for audio-visual models).
        Placeholder strings typed inside text are escaped (kept as text) unless ``placeholders_in_text=True``.
        With ``tokenize=True`` the rendered prompt goes through ``__call__`` with the media found in the
        messages (or given as ``images=`` / ``videos=``) and a ``BatchFeature`` is returned.
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ProcessorInputError(f"{type(self).__name__} has no chat template; pass chat_template=...")
        if not isinstance(conversation, (list, tuple)) or not conversation:
            raise ProcessorInputError(
                f"conversation must be a non-empty list of messages (dicts with 'role' and 'content') or a list of "
                f"such lists, got {type(conversation).__name__} {_short(conversation)}"
            )
        batched = isinstance(conversation[0], (list, tuple))
        conversations = conversation if batched else [conversation]
        rendered, found_media = [], {"image": [], "video": [], "audio": []}
        for conv in conversations:
            msgs = [self._normalise_message(m, placeholders_in_text, found_media) for m in conv]
            rendered.append(_render_jinja(template, msgs, add_generation_prompt=add_generation_prompt, **kwargs))
        if not tokenize:
            return rendered if batched else rendered[0]
        media = {
            "images": images if images is not None else (found_media["image"] or None),
            "videos": videos if videos is not None else (found_media["video"] or None),
            "audio": audio if audio is not None else (found_media["audio"] or None),
        }
        return self(text=rendered, **{k: v for k, v in media.items() if v is not None})

    def _normalise_message(self, message: dict, placeholders_in_text: bool, found: dict) -> dict:
        if not isinstance(message, dict):
            raise ProcessorInputError(
                f"each chat message must be a dict like {{'role': 'user', 'content': ...}}, got "
                f"{type(message).__name__} {_short(message)}; a conversation is a list of such dicts (a batch: a "
                f"list of conversations)"
            )
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ProcessorInputError(f"message role must be system, user or assistant, got {role!r}")
        content = message.get("content")
        if content is None:
            parts = []
        elif isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, (list, tuple)):
            parts = list(content)
        else:
            raise ProcessorInputError(
                f"{role} message content must be a string or a list of parts like {{'type': 'text', 'text': ...}}, "
                f"got {type(content).__name__} {_short(content)}"
            )
        out: list[dict] = []
        for part in parts:
            if not isinstance(part, dict):
                raise ProcessorInputError(
                    f"{role} message content parts must be dicts like {{'type': 'text', 'text': ...}} or "
                    f"{{'type': 'image'}}, got {type(part).__name__} {_short(part)}"
                )
            kind = part.get("type")
            if kind == "text":
                txt = part.get("text", "")
                if not isinstance(txt, str):
                    raise ProcessorInputError(
                        f"a text part's 'text' must be a string, got {type(txt).__name__} {_short(txt)}"
                    )
                bad = _MARKERS.search(txt)
                if bad:
                    raise ProcessorInputError(
                        f"{role} message text contains the character U+{ord(bad.group(0)):04X} at position "
                        f"{bad.start()}; U+E000-U+E003 are reserved by the processor as markers (escaping, training "
                        f"labels); remove them from the text"
                    )
                if out and out[-1]["type"] == "text":
                    # adjacent text parts render as one string: join them before escaping, so a placeholder split
                    # across parts ("look <ima" + "ge> here") is escaped as the text it is.
                    out[-1]["text"] += txt
                else:
                    out.append({"type": "text", "text": txt})
            elif kind in ("image", "video", "audio"):
                if kind not in self.modalities:
                    raise ProcessorInputError(f"{type(self).__name__} does not take {kind} content")
                src = next((part[k] for k in (kind, "path", "url") if part.get(k) is not None), None)
                options = {k: v for k, v in part.items() if k not in ("type", kind, "path", "url")}
                if options and src is None:
                    raise ProcessorInputError(
                        f"{kind} part options {sorted(options)} need the {kind} in the part itself "
                        f"({{'type': {kind!r}, 'path': ..., {', '.join(repr(k) + ': ...' for k in options)}}})"
                    )
                if src is not None:  # per-item options travel with the item: {kind: source, **options}
                    found[kind].append({kind: src, **options} if options else src)
                out.append({"type": kind})
            else:
                raise ProcessorInputError(f"unknown content part type {kind!r}; use text, image, video or audio")
        if not placeholders_in_text:
            for part in out:
                if part["type"] == "text":
                    part["text"] = self.escape_text(part["text"])
        return {"role": role, "content": out}

    # -------------------------------------------------------------------------------------- decoding
    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _short(x, limit: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _pad_list(row: list[int], width: int | None, value: int, side: str) -> list[int]:
    pad = (width - len(row)) if width else 0
    return [value] * pad + row if side == "left" else row + [value] * pad


def _make_init(attributes: tuple[str, ...], settings: dict[str, Any]):
    """A constructor with one explicit parameter per tokenizer attribute and setting: transformers reads the
    processor's constructor parameters (its code object) to know what ``from_pretrained`` may pass and what
    ``save_pretrained`` writes."""
    for name in (*attributes, *settings):
        if not name.isidentifier():
            raise ValueError(f"setting name {name!r} is not an identifier")
    params = [f"{a}=None" for a in attributes] + ["chat_template=None"] + [f"{n}=_D[{n!r}]" for n in settings]
    src = f"def __init__(self, {', '.join(params)}):\n    self._setup(locals())\n"
    namespace: dict[str, Any] = {"_D": settings}
    exec(src, namespace)  # noqa: S102 -- source built from identifiers only
    init = namespace["__init__"]
    init.__doc__ = "Tokenizer(s), chat template, then the settings: " + ", ".join(f"{n}={v!r}" for n, v in settings.items())
    return init


def _mask_escaped(text: str) -> str:
    """Same length as ``text`` with escaped spans blanked, so placeholder search skips them."""
    return _ESCAPED.sub(lambda m: " " * len(m.group(0)), text)


def _flatten_media(x, modality: str) -> tuple[list, list[int] | None]:
    """Media given flat (in placeholder order) or nested per sample -> (flat list, group sizes or None).

    A video may itself be a list of frames (PIL images or (H, W, C) arrays); such a list is one video, not a
    per-sample group. Group sizes are returned when the media were nested per sample, so the caller can check them
    against each sample's placeholders.
    """
    if modality == "video" and not isinstance(x, (list, tuple)) and getattr(x, "ndim", None) == 3:
        raise ProcessorInputError(
            f"a video given as one array of shape {tuple(x.shape)} is ambiguous (a grey video (T, H, W) or a single "
            f"frame?); pass a video as (T, H, W, C) -- a grey one as x[..., None] -- or a one-frame video as [frame]"
        )
    items = _as_list(x)
    if modality == "video" and items and _is_frame(items[0]):
        return [items], None  # one video given as a list of frames
    if items and all(isinstance(i, (list, tuple)) for i in items):
        if modality == "video" and all(i and _is_frame(i[0]) for i in items):
            return items, None  # several videos, each a list of frames
        return [m for group in items for m in group], [len(group) for group in items]
    return items, None


def _is_frame(x) -> bool:
    if x.__class__.__name__ in ("Image", "JpegImageFile", "PngImageFile") or hasattr(x, "getpixel"):
        return True
    return getattr(x, "ndim", None) == 3


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """``{% generation %}...{% endgeneration %}``: marks assistant text when ``mark_generation`` is set."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_wrap", [nodes.Name("mark_generation", "load")])
            return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _wrap(self, mark, caller):
            text = caller()
            return f"{GENERATION_OPEN}{text}{GENERATION_CLOSE}" if mark else text

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock])
    return env.from_string(template)


def _render_jinja(template: str, messages: list[dict], **kwargs) -> str:
    kwargs.setdefault("mark_generation", False)
    return _compile(template).render(messages=messages, **kwargs)
