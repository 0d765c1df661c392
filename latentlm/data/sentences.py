"""General short English sentences for the speech data set: a small procedural grammar.

Templates (digits, times, dates, colours, counting, simple commands and questions) are filled
from word lists; a sentence is a pure function of an integer seed, so the set is reproducible and
its splits are told apart by seed ranges alone, as in the shapes world (`latentlm.data.shapes`).
Its vocabulary is a few hundred distinct words: large enough that a speech model must read, small
enough that a tiny one can learn every word. Text is lower case, numbers are spelled out (the
text says exactly what is spoken), and only questions carry punctuation: "?" makes espeak-ng
raise its pitch at the end.
"""
from __future__ import annotations

import random
import zlib
from typing import Callable

from latentlm.data.shapes import split_seed

HELD_OUT_EVERY = 8  # one text in 8 is held out for the test split (see is_held_out)
TRIES = 512  # seeds per item: item i of a split draws from seeds split_seed(split, i) * TRIES + [0, TRIES)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
            "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
            "seventeenth", "eighteenth", "nineteenth", "twentieth")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink",
           "brown", "gold", "silver")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december")
PARTS_OF_DAY = ("morning", "afternoon", "evening", "night")
# Nouns whose plural adds "s".
THINGS = ("book", "cup", "door", "window", "chair", "table", "lamp", "ball", "key", "phone", "coat",
          "hat", "shoe", "bag", "pen", "plate", "bottle", "bowl", "card", "clock", "bike", "car",
          "boat", "kite", "towel", "blanket", "pillow", "basket", "button", "candle", "jacket",
          "ring", "sock", "umbrella", "balloon", "drum", "flag", "map", "ticket", "letter")
ANIMALS = ("cat", "dog", "bird", "horse", "cow", "duck", "frog", "rabbit", "goat", "sheep", "mouse",
           "tiger", "lion", "bear", "fish", "owl")
FOODS = ("bread", "rice", "soup", "cheese", "milk", "tea", "coffee", "juice", "water", "pasta",
         "salad", "butter", "honey", "cake", "chocolate", "jam")
FRUITS = ("apple", "banana", "orange", "pear", "lemon", "plum", "peach", "grape", "cherry", "melon")
PLACES = ("kitchen", "garden", "station", "park", "school", "office", "library", "market", "bank",
          "hospital", "museum", "bakery", "harbour", "cinema", "garage", "hall", "bridge", "corner",
          "shop", "playground")
ROOMS = ("kitchen", "bedroom", "bathroom", "hall", "attic", "cellar", "living room", "garden")
PEOPLE = ("anna", "ben", "clara", "david", "emma", "frank", "grace", "henry", "iris", "jack",
          "kate", "leo", "maria", "nick", "olivia", "peter", "rosa", "sam", "tom", "zoe")
RELATIVES = ("mother", "father", "sister", "brother", "teacher", "doctor", "neighbour", "friend",
             "uncle", "aunt", "grandmother", "grandfather")
ADJECTIVES = ("big", "small", "old", "new", "clean", "dirty", "heavy", "light", "soft", "hard",
              "long", "short", "round", "empty", "full", "broken", "shiny", "wet", "dry", "tall")
FEELINGS = ("happy", "tired", "hungry", "thirsty", "busy", "ready", "late", "early", "cold", "warm",
            "sleepy", "bored")
WEATHER = ("sunny", "rainy", "windy", "cloudy", "foggy", "snowy", "cold", "hot", "warm", "stormy")
GRAB_VERBS = ("bring", "take", "find", "move", "pick up", "put down", "hold", "wash", "hide", "open",
              "close", "carry", "check", "paint")
SWITCH_VERBS = ("turn on", "turn off", "switch on", "switch off", "dim", "check")
DEVICES = ("light", "radio", "heater", "fan", "oven", "television", "computer", "alarm", "music")
MOVES = ("turn left", "turn right", "go straight on", "stop", "wait", "slow down", "walk", "run")
WHERE = ("on the table", "under the bed", "next to the door", "in the box", "behind the chair",
         "near the window", "on the shelf", "in the drawer")
ASK_FOR = ("would you like", "do you want", "can i have", "shall we buy")


def number_words(n: int) -> str:
    """0 <= n < 1000 in words: 42 -> "forty two", 305 -> "three hundred and five"."""
    if not 0 <= n < 1000:
        raise ValueError(f"number {n} is out of range [0, 1000)")
    if n < 10:
        return DIGITS[n]
    if n < 20:
        return TEENS[n - 10]
    if n < 100:
        tens, units = divmod(n, 10)
        return TENS[tens - 2] + (f" {DIGITS[units]}" if units else "")
    hundreds, rest = divmod(n, 100)
    return f"{DIGITS[hundreds]} hundred" + (f" and {number_words(rest)}" if rest else "")


def time_words(rng: random.Random) -> str:
    """A clock time as spoken: "seven o'clock", "half past six", "ten forty five", "noon"."""
    hour = rng.randint(1, 12)
    minute = rng.choice((0, 0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55))
    style = rng.randrange(4)
    if minute == 0:
        if style == 0:
            return rng.choice((f"{number_words(hour)} o'clock", "noon", "midnight"))
        return f"{number_words(hour)} o'clock"
    if style == 1 and minute in (15, 30, 45):
        name = {15: "quarter past", 30: "half past", 45: "quarter to"}[minute]
        return f"{name} {number_words(hour if minute < 45 else hour % 12 + 1)}"
    if style == 2 and minute <= 30:
        return f"{number_words(minute)} past {number_words(hour)}"
    spoken = number_words(minute) if minute >= 10 else f"oh {number_words(minute)}"
    return f"{number_words(hour)} {spoken}"


IRREGULAR_PLURALS = {"sheep": "sheep", "mouse": "mice", "fish": "fish"}


def plural_of(noun: str) -> str:
    """English plural of the nouns above: "peach" -> "peaches", "cherry" -> "cherries"."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def plural(noun: str, n: int) -> str:
    """`n` of `noun` ("book"): "one book", "three books", "two mice"."""
    return f"{number_words(n)} " + (noun if n == 1 else plural_of(noun))


def _c(*words: tuple[str, ...]) -> Callable[[random.Random], str]:
    """A slot that picks one entry of the concatenated word lists."""
    pool = tuple(w for ws in words for w in ws)
    return lambda rng: rng.choice(pool)


THING, ANIMAL, FOOD, FRUIT, PLACE, ROOM = _c(THINGS), _c(ANIMALS), _c(FOODS), _c(FRUITS), _c(PLACES), _c(ROOMS)
COLOUR, DAY, MONTH, PART, PERSON = _c(COLOURS), _c(DAYS), _c(MONTHS), _c(PARTS_OF_DAY), _c(PEOPLE)
RELATIVE, ADJ, FEELING, WEATHER_WORD = _c(RELATIVES), _c(ADJECTIVES), _c(FEELINGS), _c(WEATHER)
GRAB, SWITCH, DEVICE, MOVE, PLACE_PHRASE = _c(GRAB_VERBS), _c(SWITCH_VERBS), _c(DEVICES), _c(MOVES), _c(WHERE)
WHO = _c(PEOPLE, tuple(f"my {r}" for r in RELATIVES), tuple(f"the {r}" for r in RELATIVES))
SMALL = lambda rng: rng.randint(2, 12)  # noqa: E731


def _digits(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(DIGITS) for _ in range(k))


# One template a line: a function of the rng that returns a sentence.
TEMPLATES: tuple[Callable[[random.Random], str], ...] = (
    # digits and numbers
    lambda r: f"my number is {_digits(r, r.randint(4, 7))}",
    lambda r: f"the code is {_digits(r, 4)}",
    lambda r: f"please dial {_digits(r, r.randint(3, 6))}",
    lambda r: f"room {number_words(r.randint(1, 999))} is on the {r.choice(ORDINALS[:10])} floor",
    lambda r: f"{WHO(r)} has {plural(THING(r), SMALL(r))}",
    lambda r: f"there are {plural(THING(r), SMALL(r))} {PLACE_PHRASE(r)}",
    lambda r: f"i saw {plural(ANIMAL(r), SMALL(r))} in the {PLACE(r)}",
    lambda r: f"how many {plural_of(THING(r))} are {PLACE_PHRASE(r)}?",
    lambda r: f"count from {number_words(r.randint(0, 10))} to {number_words(r.randint(11, 30))}",
    lambda r: (lambda a, b: f"{number_words(a)} plus {number_words(b)} is {number_words(a + b)}")(
        r.randint(0, 50), r.randint(0, 49)),
    lambda r: (lambda a, b: f"what is {number_words(a)} times {number_words(b)}?")(r.randint(2, 12), r.randint(2, 12)),
    lambda r: f"{PERSON(r)} is {number_words(r.randint(2, 99))} years old",
    lambda r: f"it costs {number_words(r.randint(1, 99))} pounds",
    # times and dates
    lambda r: f"what time does the {PLACE(r)} {r.choice(('open', 'close'))}?",
    lambda r: f"it is {time_words(r)}",
    lambda r: f"the train leaves at {time_words(r)}",
    lambda r: f"meet me at the {PLACE(r)} at {time_words(r)}",
    lambda r: f"wake me up at {time_words(r)} please",
    lambda r: f"the {PLACE(r)} opens at {time_words(r)} on {DAY(r)}",
    lambda r: f"which day does {WHO(r)} come home?",
    lambda r: f"today is {DAY(r)} the {r.choice(ORDINALS)} of {MONTH(r)}",
    lambda r: f"my birthday is on the {r.choice(ORDINALS)} of {MONTH(r)}",
    lambda r: f"see you on {DAY(r)} {PART(r)}",
    lambda r: "is the meeting on {} or {}?".format(*r.sample(DAYS, 2)),
    lambda r: f"it will be {WEATHER_WORD(r)} on {DAY(r)}",
    lambda r: f"will it be {WEATHER_WORD(r)} on {DAY(r)}?",
    # colours and things
    lambda r: f"the {THING(r)} is {COLOUR(r)}",
    lambda r: f"where is the {COLOUR(r)} {THING(r)}?",
    lambda r: f"i like the {ADJ(r)} {COLOUR(r)} {THING(r)}",
    lambda r: f"paint the {THING(r)} {COLOUR(r)}",
    lambda r: f"is the {THING(r)} " + "{} or {}?".format(*r.sample(COLOURS, 2)),
    lambda r: f"the {ANIMAL(r)} sat on the {COLOUR(r)} {THING(r)}",
    lambda r: f"the {THING(r)} is {PLACE_PHRASE(r)}",
    # commands
    lambda r: f"please {GRAB(r)} the {ADJ(r)} {THING(r)}",
    lambda r: f"{GRAB(r)} the {COLOUR(r)} {THING(r)} {PLACE_PHRASE(r)}",
    lambda r: f"{SWITCH(r)} the {DEVICE(r)} in the {ROOM(r)}",
    lambda r: f"{MOVE(r)} at the {PLACE(r)}",
    lambda r: f"{MOVE(r)} and then {MOVE(r)}",
    lambda r: f"give the {FRUIT(r)} to {WHO(r)}",
    lambda r: f"tell {WHO(r)} to call me at {time_words(r)}",
    lambda r: f"feed the {ANIMAL(r)} in the {ROOM(r)}",
    # questions
    lambda r: f"where is {WHO(r)}?",
    lambda r: f"is {WHO(r)} at the {PLACE(r)}?",
    lambda r: f"can you {GRAB(r)} the {THING(r)}?",
    lambda r: f"can you {SWITCH(r)} the {DEVICE(r)}?",
    lambda r: f"{r.choice(ASK_FOR)} some {FOOD(r)}?",
    lambda r: f"where are the {plural_of(FRUIT(r))} from the {PLACE(r)}?",
    lambda r: f"why is the {ANIMAL(r)} {FEELING(r)}?",
    lambda r: f"are you {FEELING(r)} this {r.choice(PARTS_OF_DAY[:3])}?",
    lambda r: f"{WHO(r)} is {FEELING(r)} this {r.choice(PARTS_OF_DAY[:3])}",
    lambda r: "how do i get from the {} to the {}?".format(*r.sample(PLACES, 2)),
    lambda r: f"do you have the {ADJ(r)} {THING(r)}?",
    lambda r: f"which {THING(r)} is {ADJ(r)}?",
    lambda r: f"who ate the {FOOD(r)} in the {ROOM(r)}?",
    lambda r: f"we need {FOOD(r)} and {plural_of(FRUIT(r))} from the {PLACE(r)}",
)


def sentence(seed: int) -> str:
    """The general sentence of `seed`: a template and its slots, all drawn from `random.Random(seed)`."""
    rng = random.Random(seed)
    return rng.choice(TEMPLATES)(rng)


def is_held_out(text: str) -> bool:
    """True for the texts only the test split speaks: about one in HELD_OUT_EVERY, by a stable hash.

    Disjoint seeds alone would let the test split repeat a short training sentence ("what time
    is it?") or shapes caption; holding texts out by their hash makes every test text unseen."""
    return zlib.crc32(text.encode()) % HELD_OUT_EVERY == 0


def first_accepted(split: str, index: int, draw: Callable[[int], str]) -> str:
    """The first text `draw(seed)` over item `index`'s seeds that belongs to `split`: held out for
    test, not held out for train and val. Item seeds of different splits never meet."""
    base = split_seed(split, index) * TRIES
    for attempt in range(TRIES):
        text = draw(base + attempt)
        if is_held_out(text) == (split == "test"):
            return text
    raise RuntimeError(f"no {split} text in {TRIES} draws for item {index}")  # odds about 1e-15


def sentence_for(split: str, index: int) -> str:
    """General sentence `index` of `split` (train, val or test)."""
    return first_accepted(split, index, sentence)


def words_of(text: str) -> list[str]:
    """The words of a sentence, punctuation dropped (to measure the vocabulary)."""
    return text.replace("?", " ").split()
