"""Turn a free-form request into workflow steps.

The rule planner knows the shipped workflows: text-to-image; caption, ask and ground about a picture
(the one given with the request, one an earlier step drew, or the conversation's last picture); and
text-to-speech the day a workflow of that name is registered. It reads a request as clauses
("draw a red circle and describe it" -> two), strips the instruction and politeness words around
what matters ("could you draw", "an image of", "where is ...?", "please") and hands that on.

An argument known only when the plan runs is an explicit value, shown in `Plan.to_dict()` as text:
`Ref(0, "image")` is `${{ steps.0.outputs.image }}` (references go backwards only), `Given("image")`
is `${{ inputs.image }}` (the picture passed with the request), `Remembered("picture")` is
`${{ memory.picture }}` (the Session's last picture).

Follow-ups read the conversation's `History`: "now make it green" draws the last drawing's
description edited (`workflows/descriptions.py`), "where is the circle?" asks about the last
picture, "say that" speaks the last text. A request it cannot serve, or a follow-up with nothing to
follow, is a `PromptError` that says why and lists what it can do: never a wrong kind of output.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from latentlm.errors import PromptError
from latentlm.vocabulary import COLOURS, SHAPES, SIZE_WORDS
from latentlm.workflows.descriptions import article, edit, normalise, parse_description

CAN_DO = ("draw a picture ('draw a red circle above a blue square'); about a given or the last picture: describe "
          "it ('describe it'), answer a question ('what colour is the circle?'), find a thing ('where is the blue "
          "square?'); change the last drawing ('now make it green'); two steps at once ('draw a red circle and "
          "describe it')")
SPEECH = "text-to-speech"


# ---- values known when the plan runs ---------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """The output `field` of the earlier step `step` of the same plan."""

    step: int
    field: str

    def __str__(self) -> str:
        return f"${{{{ steps.{self.step}.outputs.{self.field} }}}}"


@dataclass(frozen=True)
class Given:
    """A value passed with the request: `Given("image")` is `run(..., image=...)`."""

    name: str = "image"

    def __str__(self) -> str:
        return f"${{{{ inputs.{self.name} }}}}"


@dataclass(frozen=True)
class Remembered:
    """A value the Session remembers from earlier requests: `Remembered("picture")`."""

    name: str = "picture"

    def __str__(self) -> str:
        return f"${{{{ memory.{self.name} }}}}"


LATER = (Ref, Given, Remembered)


def shown(value):
    """An argument as plain data: a later value as its `${{ }}` text, anything else as it is."""
    return str(value) if isinstance(value, LATER) else value


@dataclass(frozen=True)
class Step:
    workflow: str
    args: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"workflow": self.workflow, "args": {k: shown(v) for k, v in self.args.items()}}


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    @property
    def workflow(self) -> str:
        """The workflow of the (first) step."""
        return self.steps[0].workflow

    def to_dict(self) -> dict:
        return {"steps": [s.to_dict() for s in self.steps]}


@dataclass(frozen=True)
class History:
    """What a conversation remembers: is there a last picture; the description it was drawn from (None
    for a picture that was given, not drawn); the last text output."""

    picture: bool = False
    prompt: str | None = None
    text: str | None = None


@dataclass
class _Context:
    """Where the clause being planned finds "it": the picture, its description, the last text."""

    picture: object = None  # a later value, or None
    prompt: str | None = None
    text: object = None  # a literal string or a later value
    given: bool = False  # a picture came with the request
    drawing: bool = False  # any text that is no other request is a description (`latentlm generate --prompt`)


# ---- entry point -------------------------------------------------------------------------------------
def _request_text(request: object) -> str:
    if not isinstance(request, str):
        raise PromptError(f"the request must be a string, not {type(request).__name__}; e.g. 'draw a red circle'")
    text = " ".join(request.strip().split())
    if not text:
        raise PromptError("the request is empty; say what to do, e.g. 'draw a red circle above a blue square'")
    return text


def plan(request: str, has_image: bool = False, history: History | None = None, drawing: bool = False) -> Plan:
    """'Draw a red circle.' -> one text-to-image step with prompt 'a red circle'; see the module doc.

    `drawing=True` reads text that is no other request as a description even without a drawing verb
    ("cat" draws "cat", with a warning, instead of being refused as an unknown request)."""
    text = _request_text(request)
    history = history or History()
    ctx = _Context(picture=Given("image") if has_image else Remembered("picture") if history.picture else None,
                   prompt=None if has_image else history.prompt, text=history.text, given=has_image,
                   drawing=drawing)
    steps: list[Step] = []
    for clause in clauses(text):
        for step in _plan_clause(clause, ctx, len(steps)):
            steps.append(step)
            _advance(ctx, step, len(steps) - 1)
    return Plan(tuple(steps))


def _advance(ctx: _Context, step: Step, index: int) -> None:
    if step.workflow == "text-to-image":
        ctx.picture, ctx.prompt = Ref(index, "image"), step.args["prompt"]
    elif step.workflow in ("caption", "ask", "ground"):
        ctx.text = Ref(index, "text")


# ---- clauses -----------------------------------------------------------------------------------------
_SEPARATOR = re.compile(r"\s*(?:[,;]|[.?!](?=\s))\s*(?:and\s+)?(?:then\s+|after\s+that\s+|afterwards\s+"
                        r"|(?:once|when)\s+(?:done|finished|that\s+is\s+done)\s*,?\s*)?"
                        r"|\s+and\s+(?:then\s+|after\s+that\s+|afterwards\s+)?|\s+(?:then|afterwards)\s+", re.I)
_LEADS = re.compile(
    r"(?:describe|caption|say|speak|read|tell|where|what|which|how many|how big|is|are|do|does|find|locate|"
    r"point|show me where|show where|count|highlight|box|put a box|draw|paint|generate|create|sketch|render|make it|"
    r"ask|i want to know|i\'d like to know|give me a description|give me a caption|explain|tell me about|"
    r"illustrate|text to speech|repeat|voice|"
    r"give me a caption|write a caption)\b")
_BOXES_ONLY = re.compile(
    r"(?:draw|put|add|show|mark)\s+(?:me\s+)?(?:the\s+|a\s+)?(?:bounding\s+)?box(?:es)?\b.*"
    r"|(?:show|tell)(?:\s+me)?\s+where\s+(?:things|they|everything|(?:the|each|every|all(?:\s+the)?)\s+"
    r"(?:objects?|shapes?|things?))\s+(?:is|are)"
    r"|(?:locate|find|box|mark)\s+(?:each|every|all(?:\s+the)?)\s+(?:objects?|shapes?|things?)(?:\s+in\s+(?:it|the\s+"
    r"(?:description|caption|picture|image))|\s+(?:you\s+)?mention(?:ed)?)?")


def clauses(text: str) -> list[str]:
    """A request split where a new instruction starts ("draw a red circle, then describe it" -> two).

    "a green square and a yellow circle" stays one clause: what follows "and" is not an instruction.
    A clause that only asks for boxes ("and show where things are") joins the caption before it."""
    out, start = [], 0
    for m in _SEPARATOR.finditer(text):
        if m.start() < start:
            continue
        right = _polite(text[m.end():]).lower()
        if _LEADS.match(right) and _words_of(text[start:m.start()]):  # "please, draw ..." stays whole
            out.append(text[start:m.start()])
            start = m.end()
    out.append(text[start:])
    merged: list[str] = []
    for clause in out:
        if merged and _BOXES_ONLY.fullmatch(_polite(clause).lower().rstrip(".!?")) and \
                _CAPTION.match(_words_of(merged[-1])):
            merged[-1] += " with boxes"
        else:
            merged.append(clause)
    return [c for c in merged if c.strip(" ,.;!?")] or [text]


# ---- wording -----------------------------------------------------------------------------------------
_LEAD_WORDS = re.compile(r"^(?:(?:please|pls|plz|kindly|hey|hi|hello|yo|ok|okay|so|well|also|and|then|oh|alright|first|"
                         r"firstly|thanks|thank\s+you|great|cool|nice|perfect|let's|lets|quick\s+question|quick|quickly)"
                         r"\b[\s,!:.]*)+",
                         re.I)
_ASKING = re.compile(r"^(?:(?:(?:can|could|would|will|please)\s+)?(?:you|u)\s+(?:please\s+|kindly\s+)?(?:mind\s+)?(?:to\s+)?|i'?d\s+like\s+you\s+to"
                     r"\s+|i\s+would\s+like\s+you\s+to\s+|i\s+want\s+you\s+to\s+|please\s+)", re.I)
_TAIL = re.compile(r"(?:[\s,]+(?:please|pls|plz|for me|thanks|thank you|thx|ty|for me please))+[\s.!?]*$|[\s.!?,:;]+$", re.I)
_BARE_SPEAK = re.compile(r"(?:say|speak|read|pronounce)(?:\s+(?:it\s+)?(?:out\s+loud|aloud))?", re.I)
_CONTRACTIONS = ((r"\bwhat's\b", "what is"), (r"\bwhere's\b", "where is"), (r"\bwhats\b", "what is"),
                 (r"\bit's\b", "it is"), (r"\bthere's\b", "there is"), (r"\bthat's\b", "that is"))


def _polite(text: str) -> str:
    """`text` without the politeness around the instruction: 'Could you please draw ...?' -> 'draw ...'."""
    text = text.strip()
    while True:
        stripped = _ASKING.sub("", _LEAD_WORDS.sub("", text)).strip()
        untailed = _TAIL.sub("", stripped).strip()
        stripped = stripped if _BARE_SPEAK.fullmatch(untailed) else untailed  # "say thank you" says the words
        if stripped == text:
            return text
        text = stripped


def _words_of(clause: str) -> str:
    """The clause's instruction, lowercase, polite words and final punctuation gone, contractions opened."""
    low = re.sub(r"(?:\.{2,}|\u2026)\s*", " ", _polite(clause).lower())
    for pattern, words in _CONTRACTIONS:
        low = re.sub(pattern, words, low)
    return " ".join(low.split())


def _asked(clause: str) -> bool:
    return clause.rstrip().endswith("?")


# ---- one clause ----------------------------------------------------------------------------------------
_FOLLOW = re.compile(r"(?:now|next|and now|ok now|how about|what about)\b\s*")
_ALOUD = re.compile(r"\s*\b(?:out\s+loud|aloud)\b")
_SPEAK = re.compile(r"(?:say|speak|read|pronounce|repeat|voice|utter|tts|text\s+to\s+speech)\b\s*(?P<rest>.*)",
                    re.I | re.S)
_HEAR = re.compile(r"(?:i'?d\s+(?:like|love)\s+to|i\s+want\s+to|i\s+wanna|wanna|let\s+me)\s+hear\s+(?:you\s+)?"
                   r"(?:say\s+|speak\s+|read\s+)?(?P<rest>.+)")
_LOCATE = re.compile(
    r"(?:(?:find|locate)\s+(?:out\s+)?where\s+|(?:find|locate)\s+me\s+|where\s+(?:can|do|would|could)\s+(?:i|you)\s+(?:find|see|spot)\s+|(?:(?:show|tell|give)\s+me\s+)?(?:the\s+)?"
    r"(?:location|position)\s+of\s+|where\s+(?:exactly\s+)?(?:in\s+(?:the|this|that)\s+(?:picture|image|pic|photo|drawing)\s+)?(?:is|are)\s+|(?:find|locate|highlight|outline|point\s+(?:to|at|out)|box|mark)\s+"
    r"|(?:put|draw)\s+(?:a\s+)?box(?:es)?\s+(?:around|on)\s+|(?:tell|show)(?:\s+me)?\s+where\s+|(?:i'?d\s+like\s+to\s+know|i\s+want\s+to\s+know|i\s+wonder|do\s+you\s+know)\s+where\s+)(?P<x>.+?)"
    r"(?:\s+(?:is|are))?(?:\s+located)?(?:\s+(?:in|on)\s+(?:the|this|that)\s+(?:picture|image|pic|photo|drawing))?")
_CAPTION = re.compile(
    r"(?:\w+ly\s+)?(?:describe|caption|summari[sz]e)\b|(?:give|write|make)\s+(?:me\s+)?(?:a\s+)?(?:short\s+|brief\s+)?"
    r"(?:grounded\s+)?(?:caption|description)\b|explain\s+(?:it|this|that|the)\b|tell\s+me\s+about\s+(?:it|this|that|the)\b"
    r"|(?:[\w']+\s+)*description\s+of\s+(?:it|(?:the|this|that)(?:\s+(?:picture|image|pic|photo|drawing))?)\b"
    r"|(?:[\w']+\s+)*?(?:a\s+)?(?:good\s+|short\s+|nice\s+)?(?:grounded\s+)?caption\s+(?:of|for)\s+(?:it|this|that|the)\b"
    r"|(?:a\s+)?grounded\s+caption\b"
    r"|what\s+(?:is|do\s+you\s+see|can\s+you\s+see)\s+(?:in|on)\s+(?:it|(?:the|this|that)\s+(?:picture|image|pic|photo|"
    r"drawing))\b|what\s+(?:do|can)\s+you\s+see\b|(?:tell\s+me\s+)?what\s+you\s+see\b|tell\s+me\s+what\s+is\s+in\b"
    r"|what\s+is\s+(?:this|that|it)(?:\s+(?:picture|image|pic|photo|drawing))?$"
    r"|(?:tell\s+me\s+)?what\s+(?:this|the|that|it)\b(?:\s+(?:picture|image|pic|photo|drawing))?\s+looks?\s+like\b"
    r"|how\s+would\s+you\s+(?:describe|caption)\b|what\s+you\s+(?:drew|made|painted|created)\b"
    r"|what\s+did\s+you\s+(?:draw|make|paint|create)\b|what\s+does\s+(?:the|this|it)\s*(?:picture|image|pic|photo|"
    r"drawing)?\s*show\b|what\s+is\s+(?:shown|pictured)\b|what\s+it\s+is$|what\s+this\s+is$")
_SHOW_THE = re.compile(r"show\s+me\s+(?P<x>the\s+.+)")  # with a picture at hand: find it there
_GROUNDED = re.compile(r"\b(?:box(?:es)?|bounding|grounded|grounding|locations?|where\s+things\s+are|positions?)\b")
_QUESTION = re.compile(r"(?:what|which|how|is|are|do|does|did|was|were|can\s+you\s+see|who|why|when)\b")
_EDIT_VERB = re.compile(
    r"(?:make|turn|colou?r|paint|recolou?r|change)\s+(?:it|that|this|them|the|its)\b"
    r"|(?:change|switch)\s+(?:the\s+)?(?:colou?r|shape|size)\b"
    r"|(?:put|add|place|move|swap|switch|flip|remove|delete|drop|take\s+away|take\s+out|without|same|try)\b")
_EDIT_WORD = re.compile(r"\b(?:instead|bigger|smaller|larger|tinier|should\s+be|the\s+other\s+way\s+round|again)\b")
_REPLACE = re.compile(r"(?:make|turn|change)\s+(?:it|that|this)\s+(?:into\s+|to\s+)?(?P<d>.+)")
_FRAGMENT_WORDS = frozenset({"a", "an", "one", "the", "in", "instead", *COLOURS, *SHAPES, *SIZE_WORDS, "big",
                             "bigger", "larger", "smaller", "little", "tiny", "colour", "color", "version"})


def _plan_clause(clause: str, ctx: _Context, offset: int) -> list[Step]:
    low = _words_of(clause)
    follow = _FOLLOW.match(low)
    body = low[follow.end():] if follow else low
    if not body:
        raise PromptError(f"{clause!r} is not a request it can serve; it can: {CAN_DO}")
    aloud, hear = _ALOUD.search(body), _HEAR.fullmatch(body)
    if hear:  # "I'd like to hear you say hello" -> "say hello"
        body = "say " + hear["rest"]
    elif aloud and not _SPEAK.match(body):  # "tell me what it is out loud" -> "say what it is"
        unsaid = re.sub(r"^tell\s+me\b\s*", "", (body[:aloud.start()] + body[aloud.end():]).strip())
        lead = _INDIRECT_LEAD.match(unsaid)
        body = ("say " + (unsaid[lead.end():] if lead else unsaid)).strip()
    if _SPEAK.match(body):
        return _speak(_SPEAK.match(_polite(clause)) or _SPEAK.match(body), body, ctx, offset)
    about = _about_picture(body, ctx)
    if about is not None:
        return [about]
    question_like = _asked(clause) or bool(_QUESTION.match(body))
    if _EDIT_VERB.match(body) or (_EDIT_WORD.search(body) and not question_like):
        return [_edit(body, ctx, clause)]
    if follow or (ctx.prompt and _fragment(body)):
        if (_starts_drawing(body) or _complete(body)) and not (ctx.prompt and _IT.search(body)):
            return [_draw(body, ctx, clause)]
        return [_edit(body, ctx, clause)]
    if _INDIRECT_LEAD.match(body) or _COUNT.fullmatch(body):
        return [_ask(body, ctx, clause)]
    if question_like and not _starts_drawing(body):
        return [_ask(body, ctx, clause)]
    return [_draw(body, ctx, clause)]


def _about_picture(body: str, ctx: _Context) -> Step | None:
    """A ground or caption step when `body` asks to find or describe; None otherwise."""
    located = _LOCATE.fullmatch(body) or (ctx.picture is not None and _SHOW_THE.fullmatch(body))
    if located:
        return Step("ground", {"image": _picture(ctx, body), "phrase": _phrase(located["x"], ctx)})
    if _CAPTION.match(body):
        return Step("caption", {"image": _picture(ctx, body), "grounded": bool(_GROUNDED.search(body))})
    return None


def _picture(ctx: _Context, body: str):
    if ctx.picture is None:
        raise PromptError(f"{body!r} is about a picture, and there is no earlier picture: pass one (Python: image=..., "
                          f"CLI: --image FILE) or draw one first; it can: {CAN_DO}")
    return ctx.picture


_IT = re.compile(r"\b(?:it|that\s+one|this\s+one)\b")


def _it(text: str, ctx: _Context, shape_question: bool = False) -> str:
    """The word "it" as the thing of a one-thing drawing: "the circle" ("the red object" if the shape is asked)."""
    described = parse_description(ctx.prompt) if ctx.prompt and _IT.search(text) else None
    if described is None or len(described.things) != 1:
        return text
    thing = described.things[0]
    return _IT.sub(f"the {thing.colour} object" if shape_question else f"the {thing.shape}", text)


def _phrase(text: str, ctx: _Context) -> str:
    phrase = normalise(_it(text.strip(), ctx))
    return phrase if phrase.split()[0] in ("the", "a", "an") else f"the {phrase}"


# ---- questions --------------------------------------------------------------------------------------------
_INDIRECT_LEAD = re.compile(r"(?:ask(?:\s+(?:me|it))?|tell\s+me|i'?d\s+like\s+to\s+know|i\s+want\s+to\s+know|i\s+wonder|do\s+you\s+know|i'?m\s+curious|i\s+am\s+curious)\s+")
_INDIRECT = (
    (re.compile(r"(what|which)\s+(colou?r|shape|size)\s+(.+?)\s+(is|are)"), r"\1 \2 \4 \3"),
    (re.compile(r"the\s+(colou?r|shape|size)\s+of\s+(.+)"), r"what is the \1 of \2"),
    (re.compile(r"how\s+many\s+(.+?)\s+there\s+(?:are|is)"), r"how many \1 are there"),
    (re.compile(r"(?:if|whether)\s+there\s+(is|are)\s+(.+)"), r"\1 there \2"),
    (re.compile(r"(?:if|whether)\s+((?:the|it|that)\b.*?)\s+(is|are)\s+(.+)"), r"\2 \1 \3"),
    (re.compile(r"how\s+(big|large)\s+(.+?)\s+is"), r"how \1 is \2"),
)
_COUNT = re.compile(r"count\s+(?:the\s+)?(?P<x>.+)")


def _ask(body: str, ctx: _Context, clause: str) -> Step:
    question = _direct(body)
    shape_question = bool(re.match(r"what\s+shape\b|what\s+is\s+the\s+shape\b", question))
    return Step("ask", {"image": _picture(ctx, clause), "question": _it(question, ctx, shape_question) + "?"})


def _direct(body: str) -> str:
    """An indirect question made direct ("tell me what colour the circle is" -> "what colour is the circle")."""
    counted = _COUNT.fullmatch(body)
    if counted:
        return f"how many {counted['x']} are there"
    lead = _INDIRECT_LEAD.match(body)
    rest = body[lead.end():] if lead else body
    for pattern, direct in _INDIRECT:
        if pattern.fullmatch(rest):
            return pattern.sub(direct, rest)
    return rest


# ---- drawing and editing ---------------------------------------------------------------------------------
_DRAW_INTRO = re.compile(
    r"(?:(?:(?:i'?d\s+like|i\s+would\s+like|i\s+want|i'?d\s+love|i\s+would\s+love)\s+to\s+see|(?:i\s+)?wanna\s+see|"
    r"i'?d\s+like|i\s+would\s+like|i\s+want|i\s+need|i'?d\s+love|i'?d\s+appreciate|i\s+would\s+appreciate|"
    r"(?:can|could|may)\s+i\s+(?:have|get|see)|"
    r"let\s+me\s+see|let's\s+see|let\s+us\s+see)\s+)?"
    r"(?:(?:draw|drawing|generate|generating|make|making|create|creating|paint|painting|render|rendering|sketch|gimme|"
    r"illustrate|depict|"
    r"sketching|produce|producing|show|give|imagine)(?:\s+me)?\s*:?(?:\s+|$))?"
    r"(?:(?:(?:a|an|the|one|new)\s+)*(?:image|picture|pic|drawing|painting|photo|sketch|illustration)s?\s*"
    r"(?:of|with|showing|containing|that\s+shows|:)(?:\s+|$))?")
_DESCRIPTION_START = frozenset({"a", "an", "the", "one", "two", "three", "some", *COLOURS, *SHAPES, *SIZE_WORDS,
                                "big", "little", "tiny"})
_RELATION_WORDS = ("left of", "right of", "above", "below")
# "make a poem", "create a song": verbs that need a word of a picture after them ("draw" needs none)
_VAGUE_VERB = re.compile(r".*\b(?:make|making|create|creating|produce|producing|generate|generating|give|gimme|imagine)\b")
_DRAWABLE = re.compile(rf"\b(?:{'|'.join((*COLOURS, *SHAPES, *SIZE_WORDS))}|big|little|tiny|image|picture|pic|drawing|"
                       r"painting|photo|sketch|illustration)s?\b")


def _starts_drawing(body: str) -> bool:
    return bool(_DRAW_INTRO.match(body).group(0).strip())


def _complete(body: str) -> bool:
    """A whole new description: names a colour and a shape, and no "it" or "one"."""
    words = set(body.split())
    return bool(words & set(COLOURS)) and bool(words & set(SHAPES)) and not words & {"it", "one", "them"}


def _fragment(body: str) -> bool:
    """Only words that change a drawing ("green", "a triangle", "in blue"): an edit within a conversation."""
    words = body.split()
    return bool(words) and all(w in _FRAGMENT_WORDS for w in words) and not _complete(body)


def _draw(body: str, ctx: _Context, clause: str) -> Step:
    intro = _DRAW_INTRO.match(body)
    description = re.sub(r"(?:\s+(?:and|then|or))+$", "", body[intro.end():].strip(" .!?,:;\"'"))
    if not description:
        raise PromptError(f"{clause!r} says what to do but not what to draw; add a description, e.g. 'a red circle'")
    if not ctx.drawing and (_VAGUE_VERB.match(intro.group(0)) and not _DRAWABLE.search(body)
                            or not intro.group(0).strip() and description.split()[0] not in _DESCRIPTION_START):
        raise PromptError(f"{clause!r} is not a request it can serve; it can: {CAN_DO}")
    if ctx.given:
        raise PromptError(f"{clause!r} asks for a new drawing, but a picture was given; leave the picture out to draw, "
                          f"or ask about it ('describe it', 'where is the circle?')")
    return Step("text-to-image", {"prompt": _with_articles(_shapes_span(normalise(description)))})


_THING = rf"(?:(?:a|an|the|one)\s+)?(?:(?:{'|'.join(SIZE_WORDS)})\s+)?(?:(?:{'|'.join(COLOURS)})\s+)?(?:{'|'.join(SHAPES)})"
_SPAN = re.compile(rf"{_THING}(?:\s+(?:left\s+of|right\s+of|above|below)\s+{_THING})?")


def _shapes_span(description: str) -> str:
    """'a large purple triangle for my slides' -> 'a large purple triangle': the words around one description of
    the shapes world are dropped, when the span holds every shape word; anything else stays as it is."""
    if _SPAN.fullmatch(description):
        return description
    spans = list(_SPAN.finditer(description))
    if len(spans) != 1:
        return description
    span = spans[0].group(0)
    outside = set((description[:spans[0].start()] + " " + description[spans[0].end():]).split())
    return description if outside & {*COLOURS, *SHAPES} else span


def _with_articles(description: str) -> str:
    """'blue triangle left of yellow circle' -> 'a blue triangle left of a yellow circle'."""
    words, out = description.split(), []
    for i, word in enumerate(words):
        after_relation = " ".join(words[max(0, i - 2):i]) in _RELATION_WORDS or (i and words[i - 1] in _RELATION_WORDS)
        if (i == 0 or after_relation) and word in (*COLOURS, *SHAPES, *SIZE_WORDS):
            out.append(article(word))
        out.append(word)
    return " ".join(out)


def _edit(body: str, ctx: _Context, clause: str) -> Step:
    if ctx.prompt is None:
        if ctx.picture is not None:
            raise PromptError(f"{clause!r} changes the last drawing, but the picture was given, not drawn from a "
                              "description; describe the new picture in full, e.g. 'draw a green circle'")
        raise PromptError(f"{clause!r} changes the last drawing, and there is no earlier picture; draw one first, "
                          "e.g. 'draw a red circle', then 'now make it green'")
    whole = _REPLACE.fullmatch(body)
    if whole and _complete(whole["d"]):  # "make it a blue square left of a red circle": a new description
        return Step("text-to-image", {"prompt": _with_articles(normalise(whole["d"]))})
    return Step("text-to-image", {"prompt": edit(ctx.prompt, normalise(body))})


# ---- speech ------------------------------------------------------------------------------------------------
_THAT = re.compile(r"(?:(?:it|that|this|the\s+(?:last\s+)?(?:answer|caption|text|description|result|number|reply|"
                   r"response|colou?r|shape))(?:\s+again)?(?:\s+(?:to|for)\s+me)?)?")
_OUT_LOUD = re.compile(r"^(?:out\s+loud|aloud|out)\b\s*|\s*\b(?:out\s+loud|aloud|out)\s*$", re.I)
# "read this out: hello world", "say the following: ...": the words after the colon are what to say
_LEAD_IN = re.compile(r"^(?:(?:this|that|it|the|following|these|those|words?|text|sentence|phrase|line|out|loud|aloud|"
                      r"for\s+me|please)\s*)*:"
                      r"\s*(?P<words>.+)$|^the\s+(?:word|words|phrase|sentence|text)\s+(?P<named>.+)$", re.I | re.S)


# "read this picture aloud", "say the caption" with a picture and no text yet: what the picture shows
_THE_PICTURE = re.compile(r"(?:this|that|the|my)\s+(?:picture|image|drawing|photo|scene)(?:'s\s+caption)?")
_ITS_CAPTION = re.compile(r"(?:the|its)\s+(?:caption|description)")


def _speak(match: re.Match, body: str, ctx: _Context, offset: int) -> list[Step]:
    """Speech: "say that" (the last text), "say what it is" (caption, then speech), "say hello" (those words)."""
    field_name = _speech_field()
    rest = _OUT_LOUD.sub("", match["rest"].strip(" .!?,;")).strip(" .!?,:;")
    lead_in = _LEAD_IN.match(rest)
    if lead_in:
        return [Step(SPEECH, {field_name: (lead_in["words"] or lead_in["named"]).strip(" \"'")})]
    low = _words_of(rest)
    if _THE_PICTURE.fullmatch(low) or (ctx.text is None and ctx.picture is not None and _ITS_CAPTION.fullmatch(low)):
        caption = Step("caption", {"image": _picture(ctx, body), "grounded": False})
        return [caption, Step(SPEECH, {field_name: Ref(offset, "text")})]
    if (low and _THAT.fullmatch(low)) or not rest:  # "say that", "say it again", a bare "say"
        if ctx.text is None:
            raise PromptError(f"{body!r}: there is no earlier text to say; ask for some first ('describe it'), or say "
                              "what to say ('say hello')")
        return [Step(SPEECH, {field_name: ctx.text})]
    first = _about_picture(low, ctx) or (_ask(low, ctx, body) if _QUESTION.match(low) else None)
    if first is not None:
        return [first, Step(SPEECH, {field_name: Ref(offset, "text")})]
    return [Step(SPEECH, {field_name: rest.strip("\"'")})]


def _speech_field() -> str:
    """The text input of the registered text-to-speech workflow; a `PromptError` while there is none."""
    from latentlm.workflows import builtin  # noqa: F401 - registers the built-in workflows
    from latentlm.workflows.registry import REGISTRY

    workflow = REGISTRY.get(SPEECH)
    if workflow is None:
        raise PromptError(f"speech requests need the {SPEECH} workflow, which this release does not ship yet; "
                          f"it can: {CAN_DO}")
    fields = workflow.Inputs.model_fields
    return next((n for n in ("text", "prompt") if n in fields), next(iter(fields)))
