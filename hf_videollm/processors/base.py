"""The shared processor: text + media -> model inputs, with placeholders expanded to the exact token counts.

A model processor subclasses :class:`VideoLLMProcessor` and implements ``_process_images`` / ``_process_videos``
(pixels + the number of tokens each item becomes, computed with the same formula the model uses) and, if needed,
``_expand`` (e.g. LLaVA v1's ``<im_start> ... <im_end>`` wrapper). The base class then:

* finds the placeholders (``<image>``, ``<video>``, ...) in each text and checks them against the media given, per
  sample, before anything heavy runs;
* tokenizes the text between placeholders chunk by chunk (as the original LLaVA-family code does) and inserts one
  placeholder id per media token, so placeholder ids never go through the tokenizer and can lie outside the vocab;
* pads (side from the tokenizer), checks ``max_length`` without ever cutting a media span, and enforces the
  per-sample visual-token budget.

Placeholders typed by a user inside chat messages are text: :meth:`apply_chat_template` escapes them (and the
tokenizer's special tokens) in user content, and they are encoded as ordinary characters. In the raw
``processor(text=...)`` call the placeholder strings are placeholders (the transformers convention); wrap literal
text with :meth:`escape_text` there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin

__all__ = ["VideoLLMProcessor", "ProcessorInputError", "ESCAPE_OPEN", "ESCAPE_CLOSE"]

# Private-use characters marking a literal (escaped) control string inside text.
ESCAPE_OPEN = "\ue000"
ESCAPE_CLOSE = "\ue001"
# Markers around assistant text rendered inside ``{% generation %}`` blocks (used for training labels).
GENERATION_OPEN = "\ue002"
GENERATION_CLOSE = "\ue003"
_ESCAPED = re.compile(f"{ESCAPE_OPEN}(.*?){ESCAPE_CLOSE}", re.S)


class ProcessorInputError(ValueError):
    """Inputs to a processor that cannot be turned into valid model inputs."""


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


class VideoLLMProcessor(ProcessorMixin):
    """Base processor. Subclasses define ``__init__`` (explicit settings, saved in ``processor_config.json``)."""

    #: modalities this processor handles, in the order of ``media`` keyword arguments.
    modalities: tuple[str, ...] = ("image", "video")

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
    def _process_images(self, images: list) -> tuple[dict[str, Any], list[int]]:
        raise ProcessorInputError(f"{type(self).__name__} does not take images")

    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list[int]]:
        raise ProcessorInputError(f"{type(self).__name__} does not take videos")

    def _process_audios(self, audios: list) -> tuple[dict[str, Any], list[int]]:
        raise ProcessorInputError(f"{type(self).__name__} does not take audio")

    def _expand(self, modality: str, num_tokens: int) -> list[int]:
        """Token ids that replace one placeholder of ``modality`` standing for ``num_tokens`` media tokens."""
        return [self.media_token_id(modality)] * num_tokens

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
        """Text (+ media) -> ``input_ids``, ``attention_mask``, pixel tensors (and ``labels`` on request).

        ``labels`` (``return_labels=True``) supervise only text rendered inside ``{% generation %}`` blocks of the
        chat template (assistant turns, end-of-turn token included); everything else is -100.
        """
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)} for {type(self).__name__}")
        if text is None:
            raise ProcessorInputError("text is required (it carries the placeholders that say where media go)")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ProcessorInputError("text must be a string or a non-empty list of strings")

        given = {
            "image": _flatten_media(images, "image"),
            "video": _flatten_media(videos, "video"),
            "audio": _flatten_media(audio, "audio"),
        }
        for modality, items in given.items():
            if items and modality not in self.modalities:
                raise ProcessorInputError(f"{type(self).__name__} does not take {modality} inputs")

        # 1. placeholders per sample, checked against the media given (before any decoding work).
        regex = self._placeholder_regex()
        segments: list[list[tuple[str, str]]] = []  # per sample: ("text", s) | (modality, "")
        per_sample: list[dict[str, int]] = []
        for t in texts:
            segs, counts, pos = [], dict.fromkeys(self.modalities, 0), 0
            for m in regex.finditer(_mask_escaped(t)):
                segs.append(("text", t[pos : m.start()]))
                segs.append((m.lastgroup, ""))
                counts[m.lastgroup] += 1
                pos = m.end()
            segs.append(("text", t[pos:]))
            segments.append(segs)
            per_sample.append(counts)
        for modality in self.modalities:
            n_text = sum(c[modality] for c in per_sample)
            n_media = len(given[modality])
            if n_text != n_media:
                token = self.media_token(modality)
                counts = [c[modality] for c in per_sample]
                hint = (
                    f"add one {token} per {modality} where it belongs in the text"
                    if n_text < n_media
                    else f"pass one {modality} per {token}, or escape literal text with processor.escape_text()"
                )
                raise ProcessorInputError(
                    f"the text has {n_text} {token} placeholder(s) (per sample: {counts}) but {n_media} "
                    f"{modality}(s) were given; {hint}"
                )

        # 2. media -> tensors + token counts.
        features: dict[str, Any] = {}
        token_counts: dict[str, list[int]] = {}
        for modality in self.modalities:
            items = given[modality]
            if not items:
                continue
            data, counts = getattr(self, f"_process_{modality}s")(items)
            if len(counts) != len(items):
                raise RuntimeError(f"{type(self).__name__} returned {len(counts)} token counts for {len(items)} {modality}s")
            features.update(data)
            token_counts[modality] = counts

        # 3. token ids per sample.
        prefix, suffix = self._special_affixes() if add_special_tokens else ([], [])
        next_item = dict.fromkeys(self.modalities, 0)
        rows: list[list[int]] = []
        media_spans: list[list[tuple[int, int]]] = []
        budget = getattr(self, "max_visual_tokens", None)
        whole = getattr(self, "tokenization", "chunks") == "whole"
        placeholder_ids = self._placeholder_token_ids() if whole else {}
        label_rows: list[list[int]] = []
        for i, segs in enumerate(segments):
            ids = list(prefix)
            sup = [False] * len(ids)
            spans = []
            visual = 0
            state = {"open": False}
            if whole:
                # transformers' convention: tokenize the whole prompt with the placeholder tokens in place.
                text_ids, text_sup = self._encode_text(
                    "".join(s if k == "text" else self.media_token(k) for k, s in segs), state
                )
                pieces = [
                    ("media", placeholder_ids[t], False) if t in placeholder_ids else ("id", t, f)
                    for t, f in zip(text_ids, text_sup)
                ]
            else:
                # the original LLaVA-family convention: tokenize the text between placeholders chunk by chunk.
                pieces = []
                for kind, s in segs:
                    if kind == "text":
                        t_ids, t_sup = self._encode_text(s, state)
                        pieces += [("id", t, f) for t, f in zip(t_ids, t_sup)]
                    else:
                        pieces.append(("media", kind, False))
            for what, value, flag in pieces:
                if what == "id":
                    ids.append(value)
                    sup.append(flag)
                    continue
                n = token_counts[value][next_item[value]]
                next_item[value] += 1
                start = len(ids)
                ids += self._expand(value, n)
                sup += [False] * (len(ids) - start)
                spans.append((start, len(ids)))
                visual += n
            ids += suffix
            sup += [False] * len(suffix)
            if budget is not None and visual > budget:
                raise ProcessorInputError(
                    f"sample {i} needs {visual} media tokens, over the budget max_visual_tokens={budget}; use fewer "
                    f"frames/images (num_frames, fps), or raise processor.max_visual_tokens if the model's context allows"
                )
            if max_length is not None and len(ids) > max_length:
                cut_media = any(end > max_length for _, end in spans)
                if not truncation or cut_media:
                    why = (
                        "truncating would cut a media span" if truncation and cut_media else "truncation is off"
                    )
                    raise ProcessorInputError(
                        f"sample {i} is {len(ids)} tokens long (media tokens: {visual}), over max_length={max_length}, "
                        f"and {why}; shorten the text, use fewer frames/images, or raise max_length"
                    )
                ids, sup = ids[:max_length], sup[:max_length]
            rows.append(ids)
            label_rows.append([t if f else -100 for t, f in zip(ids, sup)])
            media_spans.append(spans)

        # 4. padding.
        side = padding_side or getattr(self.tokenizer, "padding_side", "right")
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        width = max(len(r) for r in rows)
        if padding == "max_length":
            if max_length is None:
                raise ProcessorInputError("padding='max_length' needs max_length")
            width = max_length
        elif not padding and len({len(r) for r in rows}) > 1:
            if return_tensors is not None:
                raise ProcessorInputError("texts have different lengths; pass padding=True to batch them as tensors")
            width = None
        input_ids, attention_mask, labels = [], [], []
        for r, lab in zip(rows, label_rows):
            pad = (width - len(r)) if width else 0
            if side == "left":
                input_ids.append([pad_id] * pad + r)
                attention_mask.append([0] * pad + [1] * len(r))
                labels.append([-100] * pad + lab)
            else:
                input_ids.append(r + [pad_id] * pad)
                attention_mask.append([1] * len(r) + [0] * pad)
                labels.append(lab + [-100] * pad)

        data: dict[str, Any] = dict(features)
        if return_tensors == "pt":
            data["input_ids"] = torch.tensor(input_ids, dtype=torch.long)
            data["attention_mask"] = torch.tensor(attention_mask, dtype=torch.long)
            if return_labels:
                data["labels"] = torch.tensor(labels, dtype=torch.long)
        elif return_tensors is None:
            data["input_ids"] = input_ids
            data["attention_mask"] = attention_mask
            if return_labels:
                data["labels"] = labels
        else:
            raise ProcessorInputError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or None")
        return BatchFeature(data=data)

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
        ``{"type": "video"}`` (optionally with ``"image"``/``"video"``/``"path"``/``"url"`` holding the media).
        Placeholder strings typed inside text are escaped (kept as text) unless ``placeholders_in_text=True``.
        With ``tokenize=True`` the rendered prompt goes through ``__call__`` with the media found in the
        messages (or given as ``images=`` / ``videos=``) and a ``BatchFeature`` is returned.
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ProcessorInputError(f"{type(self).__name__} has no chat template; pass chat_template=...")
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
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
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ProcessorInputError(f"message role must be system, user or assistant, got {role!r}")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        out = []
        for part in parts:
            kind = part.get("type")
            if kind == "text":
                txt = part.get("text", "")
                out.append({"type": "text", "text": txt if placeholders_in_text else self.escape_text(txt)})
            elif kind in ("image", "video", "audio"):
                if kind not in self.modalities:
                    raise ProcessorInputError(f"{type(self).__name__} does not take {kind} content")
                src = next((part[k] for k in (kind, "path", "url") if part.get(k) is not None), None)
                if src is not None:
                    found[kind].append(src)
                out.append({"type": kind})
            else:
                raise ProcessorInputError(f"unknown content part type {kind!r}; use text, image, video or audio")
        return {"role": role, "content": out}

    # -------------------------------------------------------------------------------------- decoding
    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def _mask_escaped(text: str) -> str:
    """Same length as ``text`` with escaped spans blanked, so placeholder search skips them."""
    return _ESCAPED.sub(lambda m: " " * len(m.group(0)), text)


def _flatten_media(x, modality: str) -> list:
    """Media given flat (in placeholder order) or nested per sample -> flat list.

    A video may itself be a list of frames (PIL images or (H, W, C) arrays); such a list is one video, not a
    per-sample group.
    """
    items = _as_list(x)
    if modality == "video" and items and _is_frame(items[0]):
        return [items]  # one video given as a list of frames
    if items and all(isinstance(i, (list, tuple)) for i in items):
        if modality == "video" and all(i and _is_frame(i[0]) for i in items):
            return items  # several videos, each a list of frames
        return [m for group in items for m in group]
    return items


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
