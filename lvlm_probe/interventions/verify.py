"""Verify-and-delete: ask the model about every object its description names, and drop the ones it denies.

A co-occurrence hallucination is called up by its context (the circle, named or in view, brings the square), not by
the object's own pixels. Contrasting the image with a noised or absent one removes only what the real image
supports less than the distorted one: a square that the preceding words call up is about as likely either way, and
one that the circle's pixels call up is even favoured. What the model may still get right is the direct question
"is there a square ?", which reads the image for that one object. :class:`VerifyObjects` generates as usual, then asks that
question about each object class the text names (greedily, about the same image) and deletes from the text every
mention whose object the model denies. Nothing is trained and no activation is edited. It is the toolkit's
deletion-only form of the verification step of Woodpecker (Yin et al., 2023, https://arxiv.org/abs/2310.16045),
which asks the model (and an expert detector) about each claimed object and rewrites the text with the answers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from lvlm_probe.errors import InputError
from lvlm_probe.interventions.base import Intervention, check_text_strategy
from lvlm_probe.misalignment.vocab import Vocabulary
from lvlm_probe.models.records import Batch, Generation


def delete_mentions(text: str, claims: list[Any], drop: set[int]) -> str:
    """``text`` without the object mentions whose index is in ``drop``.

    A mention after the first is deleted with what joins it to the mention before (``" , a small blue square"``,
    ``" and a ring"``); the first is deleted up to the start of the next mention kept, so the text keeps its opening
    words and its closing punctuation (with every mention deleted, what lies between the first and the last goes
    too).

    Parameters
    ----------
    text : str
    claims : list of Claim
        :func:`~lvlm_probe.misalignment.extract_claims` of ``text``; their object claims give each mention's
        noun-phrase span.
    drop : set of int
        Mention indices (``Claim.mention``) to delete.
    """
    spans: dict[int, tuple[int, int]] = {}
    for c in claims:
        if c.kind == "object" and c.mention >= 0:
            spans[c.mention] = tuple(c.claim_span)
    order = sorted(spans)
    cuts = []
    for pos, m in enumerate(order):
        if m not in drop:
            continue
        kept_before = [k for k in order[:pos] if k not in drop]
        if kept_before:
            cuts.append((spans[kept_before[-1]][1], spans[m][1]))
        else:
            later = [k for k in order[pos + 1:] if k not in drop]
            cuts.append((spans[m][0], spans[later[0]][0]) if later else (spans[order[0]][0], spans[order[-1]][1]))
    out, at = [], 0
    for a, b in sorted(cuts):
        if a >= at:
            out.append(text[at:a])
            at = b
        else:
            at = max(at, b)
    out.append(text[at:])
    return "".join(out)


@dataclass(frozen=True)
class VerifyObjects(Intervention):
    """Generate, then ask the model about each object class the text names and delete the mentions it denies.

    ``question`` is the yes/no question in the model's own prompt format (``{}``: the object's class as the
    vocabulary names it); the organisms are asked as they were trained, ``"is there a {} ?"``; a hub model would be
    asked e.g. ``"Is there a {} in the image? Answer yes or no."``. The questions are decoded greedily (at most
    ``answer_tokens`` tokens) about the same image; an answer that reads as "no" deletes the mention, any other
    answer keeps it. A text that names no object (an answer to a question) is left as generated. Only for families
    that take one ``[C, H, W]`` pixel tensor per image (LLaVA-1.5 and the organisms), one image per item.
    """

    question: str = "is there a {} ?"
    answer_tokens: int = 3
    vocabulary: Vocabulary | None = None
    name = "verify_objects"
    paper = ("toolkit: deletion-only verification after Woodpecker (Yin et al., 2023, https://arxiv.org/abs/2310.16045): "
             "ask about each claimed object, drop the denied ones")

    def describe(self) -> dict:
        """JSON-able ``{"method", "paper", **knobs}`` (a custom vocabulary is named, not written out)."""
        return {"method": self.name, "paper": self.paper, "question": self.question,
                "answer_tokens": self.answer_tokens, "vocabulary": "default" if self.vocabulary is None else "custom"}

    def generate(self, model: Any, batch: Batch, **generate_kwargs: Any) -> Generation:
        """Generate under the intervention (called by :func:`~lvlm_probe.interventions.decode`)."""
        from lvlm_probe.misalignment import extract_claims
        from lvlm_probe.misalignment.readers import read_yes_no

        if "{}" not in self.question:
            raise InputError(f"verify_objects: question {self.question!r} needs a {{}} where the class goes")
        check_text_strategy(self.name, "edits the generated text", model, batch, generate_kwargs)
        gen = model.generate(batch, **generate_kwargs)
        claims = [extract_claims(t, self.vocabulary) for t in gen.text]
        asks = list(dict.fromkeys((b, c.subject) for b, cs in enumerate(claims) for c in cs
                                  if c.kind == "object" and not c.negated))
        denied = self._denied(model, batch, asks, read_yes_no)
        tokens = []
        for b, (text, cs) in enumerate(zip(gen.text, claims)):
            drop = {c.mention for c in cs if c.kind == "object" and not c.negated and (b, c.subject) in denied}
            if not drop:
                tokens.append(gen.tokens[b])
                continue
            ended = bool(gen.tokens[b]) and gen.tokens[b][-1] == model.tokenizer.eos_token_id
            ids = model.tokenizer.encode(delete_mentions(text, cs, drop), add_special_tokens=False)
            tokens.append(list(ids) + ([model.tokenizer.eos_token_id] if ended else []))
        return model.generation_from_tokens(batch, tokens, dict(generate_kwargs))

    def _denied(self, model: Any, batch: Batch, asks: list[tuple[int, str]], read: Any) -> set[tuple[int, str]]:
        """``(item, class)`` pairs whose question the model answers "no" (one greedy batch of questions)."""
        if not asks:
            return set()
        H, W = batch.pixel_values.shape[-2:]
        blank = Image.new("RGB", (int(W), int(H)))
        step, answers = max(1, len(batch)), []
        for k in range(0, len(asks), step):  # as many questions at a time as the caller's batch holds items
            chunk = asks[k:k + step]
            q = model.prepare([blank] * len(chunk), [self.question.format(subject) for _, subject in chunk])
            q = replace(q, pixel_values=batch.pixel_values[[b for b, _ in chunk]].to(q.pixel_values.dtype))
            answers += model.generate(q, max_new_tokens=self.answer_tokens).text
        return {ask for ask, a in zip(asks, answers) if read(a) == "no"}
