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
from lvlm_probe.schema import OBJECT_QUESTION


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

    question: str = OBJECT_QUESTION
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


def _predicates(claimed: str, vocabulary: Vocabulary) -> list[str]:
    """The predicates a denied ``claimed`` may be corrected to, most likely first: its converse (the same axis),
    then every other canonical predicate of the vocabulary."""
    from lvlm_probe.data.scene import GEOMETRIC_RELATIONS

    known = list(dict.fromkeys(vocabulary.relations.values()))
    first = [GEOMETRIC_RELATIONS[claimed]] if claimed in GEOMETRIC_RELATIONS else []
    return [p for p in dict.fromkeys(first + known) if p != claimed]


@dataclass(frozen=True)
class VerifyRelations(Intervention):
    """Generate, then ask the model about each relation the text states and correct the ones it denies.

    A relation stereotype that lives in the training text (the triangle is "above" the cross in every caption)
    writes its predicate into a description whatever the image shows, while the direct question "is the triangle
    above the cross ?" still reads the image. For each stated (not negated) relation, the model is asked that
    question (``question``: ``{subject}``, ``{predicate}``, ``{object}``; greedily, about the same image); when
    it answers "no", it is asked about the other predicates (the converse first, then the vocabulary's others) and
    the relation phrase is replaced by the first one it affirms. A denied relation with no affirmed alternative
    is left as written. Nothing is trained and no activation is edited: the verification step of Woodpecker (Yin
    et al., 2023, https://arxiv.org/abs/2310.16045) applied to relations, with the model as its own verifier.
    Only for families that take one ``[C, H, W]`` pixel tensor per image (LLaVA-1.5 and the organisms).
    """

    question: str = "is the {subject} {predicate} the {object} ?"
    answer_tokens: int = 3
    vocabulary: Vocabulary | None = None
    name = "verify_relations"
    paper = ("toolkit: relation verification after Woodpecker (Yin et al., 2023, https://arxiv.org/abs/2310.16045): "
             "ask about each stated relation, replace a denied one by the predicate the model affirms")

    describe = VerifyObjects.describe  # the same knobs: question, answer_tokens, vocabulary

    def generate(self, model: Any, batch: Batch, **generate_kwargs: Any) -> Generation:
        """Generate under the intervention (called by :func:`~lvlm_probe.interventions.decode`)."""
        from lvlm_probe.misalignment import extract_claims
        from lvlm_probe.misalignment.vocab import default_vocabulary

        missing = [k for k in ("{subject}", "{predicate}", "{object}") if k not in self.question]
        if missing:
            raise InputError(f"verify_relations: question {self.question!r} needs {', '.join(missing)}")
        check_text_strategy(self.name, "edits the generated text", model, batch, generate_kwargs)
        vocab = self.vocabulary or default_vocabulary()
        gen = model.generate(batch, **generate_kwargs)
        rels = [(b, c) for b, t in enumerate(gen.text) for c in extract_claims(t, vocab)
                if c.kind == "relation" and not c.negated and c.object]
        fixes = self._corrections(model, batch, rels, vocab)
        if not fixes:
            return gen
        tokens = []
        for b, text in enumerate(gen.text):
            mine = sorted(((c.span, p) for (bb, c), p in zip(rels, fixes) if bb == b and p), reverse=True)
            if not mine:
                tokens.append(gen.tokens[b])
                continue
            for (start, end), pred in mine:  # right to left, so earlier spans stay valid
                text = text[:start] + pred + text[end:]
            ended = bool(gen.tokens[b]) and gen.tokens[b][-1] == model.tokenizer.eos_token_id
            ids = model.tokenizer.encode(text, add_special_tokens=False)
            tokens.append(list(ids) + ([model.tokenizer.eos_token_id] if ended else []))
        return model.generation_from_tokens(batch, tokens, dict(generate_kwargs))

    def _corrections(self, model: Any, batch: Batch, rels: list[tuple[int, Any]], vocab: Vocabulary
                     ) -> list[str | None]:
        """Per stated relation: the predicate to write instead (None: kept). Asked in rounds: every claim first,
        then the next candidate of each denied one, until one is affirmed or none is left."""
        out: list[str | None] = [None] * len(rels)
        todo = {k: [c.value] + _predicates(c.value, vocab) for k, (_, c) in enumerate(rels)}
        while todo:
            asks = [(k, rels[k][0], rels[k][1], preds[0]) for k, preds in todo.items()]
            said = self._answers(model, batch, asks)
            for (k, _, c, pred), a in zip(asks, said):
                if pred == c.value and a != "no":  # the claim stands
                    del todo[k]
                elif pred != c.value and a == "yes":
                    out[k] = pred
                    del todo[k]
                else:
                    todo[k] = todo[k][1:]
                    if not todo[k]:
                        del todo[k]
        return out

    def _answers(self, model: Any, batch: Batch, asks: list[tuple[int, int, Any, str]]) -> list[str | None]:
        """The yes/no reading of each ``(key, item, claim, predicate)`` question, asked about the item's image."""
        from lvlm_probe.misalignment.readers import read_yes_no

        H, W = batch.pixel_values.shape[-2:]
        blank = Image.new("RGB", (int(W), int(H)))
        step, answers = max(1, len(batch)), []
        for k in range(0, len(asks), step):
            chunk = asks[k:k + step]
            q = model.prepare([blank] * len(chunk), [self.question.format(subject=c.subject, predicate=p, object=c.object)
                                                     for _, _, c, p in chunk])
            q = replace(q, pixel_values=batch.pixel_values[[b for _, b, _, _ in chunk]].to(q.pixel_values.dtype))
            answers += [read_yes_no(t) for t in model.generate(q, max_new_tokens=self.answer_tokens).text]
        return answers
