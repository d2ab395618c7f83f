"""A seeded generator of short English reviews (movies, books, gadgets, household products, restaurants).

The offline default LM is trained on this text, so its samples read as reviews whose sentiment varies from clearly
positive to clearly negative. That spread is what the RLHF demos need: a policy rewarded by VADER sentiment
(Hutto & Gilbert, 2014) has room to move the compound score by far more than 0.3.

The text comes from a small context-free grammar. Rules are named lists of alternatives (``"a|b|c"``); an alternative
may reference other rules as ``{name}``. A reference is resolved with the review's *current polarity*
(``+``, ``-`` or ``0``) and *domain*, most specific first:
``domain:name<polarity>``, ``name<polarity>``, ``domain:name``, ``name``. ``{name~}`` flips the polarity
(so ``not {adj~}`` gives "not bad" in a positive sentence), and ``{name+}``, ``{name-}``, ``{name0}`` fix it.
Rules in :data:`NO_REPEAT` never repeat a value within one review ("the plot ... the plot").

Reviews are 1-4 sentences with correct spacing and punctuation, so word-level tokenization round-trips them exactly.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

SENTIMENTS = ("positive", "negative", "mixed", "neutral")
DOMAINS = ("movie", "book", "gadget", "home", "restaurant")
# Positive and negative dominate so that samples spread to both ends of VADER's scale; mixed and neutral reviews
# keep the middle populated. Tuned so that the mean VADER compound of the corpus is close to zero.
DEFAULT_WEIGHTS = {"positive": 0.35, "negative": 0.43, "mixed": 0.13, "neutral": 0.09}

_REF = re.compile(r"\{([a-z_]+)([~+\-0]?)\}")
_SENTENCE_START = re.compile(r"([.!?] )([a-z])")

RULES: dict[str, str] = {
    # ---- shared words -------------------------------------------------------------------------------------------
    "adv+": "really|very|truly|absolutely|incredibly|so|genuinely|surprisingly|remarkably|wonderfully",
    "adv-": "really|very|truly|incredibly|so|painfully|just|pretty|utterly|downright",
    "adv0": "pretty|fairly|mostly|more or less|reasonably",
    "adj+": "good|great|excellent|wonderful|amazing|fantastic|brilliant|superb|lovely|perfect|outstanding|impressive|"
    "delightful|enjoyable|solid|nice|terrific|awesome|fabulous|marvelous|splendid|remarkable|magnificent|pleasant|"
    "satisfying|charming",
    "adj-": "bad|poor|awful|terrible|horrible|disappointing|weak|mediocre|dreadful|pathetic|sloppy|annoying|useless|"
    "frustrating|lousy|horrendous|lame|unpleasant|irritating|ridiculous|flawed|unimpressive|inferior|nasty",
    "adj0": "okay|fine|average|ordinary|alright|standard|acceptable|unremarkable",
    # predicates of an aspect ("the plot was ...") and of the reviewed thing itself ("this kettle is ...")
    "pred+": "{adv+} {adj+}|{adj+}|{adj+} and {adj+}|{adj+} from start to finish|not {adj-} at all|"
    "better than I expected|{adv+} {adj+}, to be honest|a real pleasure|a {adj+} surprise",
    "pred-": "{adv-} {adj-}|{adj-}|{adj-} and {adj-}|a complete disaster|not {adj+} at all|worse than I expected|"
    "{adv-} {adj-}, to be honest|a total mess|a real shame|a {adj-} surprise",
    "pred0": "{adv0} {adj0}|{adj0}|about what I expected|{adj0}, nothing special|{adj0}, I guess|just {adj0}",
    "tpred+": "{pred+}|{pred+}|{adv+} {dadj+}|{dadj+} and {adj+}|{adj+} and {dadj+}",
    "tpred-": "{pred-}|{pred-}|{adv-} {dadj-}|{dadj-} and {adj-}|{adj-} and {dadj-}",
    "tpred0": "{pred0}|{adv0} {dadj0}",
    "dadj0": "average|ordinary|okay|fine|simple",
    "excl+": ".|!|.",
    "excl-": ".|!|.",
    "excl0": ".",
    "love+": "loved|really liked|enjoyed|adored|was impressed by|was happy with|was delighted by",
    "love-": "hated|did not like|could not stand|was disappointed by|was annoyed by|was bored by|disliked",
    "disc": "Honestly,|To be honest,|Overall,|In short,|All in all,|Frankly,|In the end,|Seriously,|Basically,",
    "but": "But|However,|Sadly,|That said,|Still,|On the other hand,|Then again,",
    "relation": "wife|husband|neighbor|sister|brother|mom|dad|son|daughter|roommate|partner|kids|coworker|cousin",
    "when": "last night|last week|over the weekend|on Friday|yesterday|a few days ago|this morning|last month|"
    "on Sunday|after work",
    "duration": "a week|two weeks|a month|three months|six months|a year",
    "anyone": "anyone|my friends|my family|other parents|my coworkers|first timers",
    "be": "was",
    "gadget:be": "is",
    "home:be": "is",
    "it_be": "it was",
    "gadget:it_be": "it is",
    "home:it_be": "it is",
    "closer+": "Highly recommended!|Loved it!|I would recommend it to {anyone}.|Ten out of ten.|"
    "Definitely worth it.|A great experience.|Very happy with it.|I am so glad I tried it.|Perfect.|"
    "What a pleasant surprise!|Absolutely awesome.|Five stars, well deserved.",
    "closer-": "What a waste.|Avoid it.|I would not recommend it to {anyone}.|Very disappointed.|Never again, sadly.|"
    "What a disappointment.|I regret it.|Terrible experience.|A total waste.|What a shame.|One star, and that is "
    "generous.|Total failure.",
    "closer0": "It is what it is.|Maybe worth a try.|Your mileage may vary.|Nothing more to say.|It was okay.|"
    "Make of that what you will.|Three stars.",
    # ---- generic sentences (lower-case start: the assembler capitalises) ------------------------------------------
    "sent+": "the {aspect} {be} {pred+}{excl+}|I {love+} the {aspect}.|{disc} the {aspect} {be} {adj+}.|"
    "the {aspect} and the {aspect} were both {adj+}.|{it_be} {adv+} {dadj+}, which I loved.|"
    "{it_be} {adv+} {adj+}{excl+}|I would recommend it to {anyone}.|the {aspects} were {pred+}{excl+}|"
    "{domain_sent+}|{domain_sent+}|{domain_sent+}|I was {adv+} happy with the {aspect}.|"
    "even the {aspect} {be} {adj+}.",
    "sent-": "the {aspect} {be} {pred-}{excl-}|I {love-} the {aspect}.|{disc} the {aspect} {be} {adj-}.|"
    "the {aspect} and the {aspect} were both {adj-}.|{it_be} {adv-} {dadj-}, which I hated.|"
    "{it_be} {adv-} {adj-}{excl-}|I would not recommend it to {anyone}.|the {aspects} were {pred-}{excl-}|"
    "{domain_sent-}|{domain_sent-}|{domain_sent-}|I was {adv-} disappointed with the {aspect}.|"
    "even the {aspect} {be} {adj-}.",
    "sent0": "the {aspect} {be} {pred0}.|the {aspects} were {pred0}.|{domain_sent0}|{domain_sent0}|"
    "{disc} the {aspect} {be} {adj0}.",
    "contrast_sent": "the {aspect} {be} {pred}{excl}|the {aspects} were {pred}.|I {love} the {aspect}.|"
    "{domain_sent}|the {aspect} {be} the {best} part.",
    "best+": "best",
    "best-": "worst",
    "mixed_sent": "the {aspect} {be} {adj+}, but the {aspect} {be} {adj-}.|"
    "the {aspect} {be} {adj-}, but the {aspect} {be} {adj+}.|"
    "I {love+} the {aspect}, but the {aspect} {be} {adj-}.|I {love-} the {aspect}, but the {aspect} {be} {adj+}.",
    # ---- movies -----------------------------------------------------------------------------------------------
    "movie:thing": "movie|film|sequel|action movie|documentary|musical|animated movie|show|drama|western|spy movie|"
    "sitcom|remake|mini series",
    "movie:aspect": "acting|plot|story|ending|soundtrack|dialogue|pacing|script|cinematography|music|lead actor|"
    "editing|score|opening scene|final scene|camera work|direction|second half",
    "movie:aspects": "special effects|characters|jokes|fight scenes|costumes|actors|songs|visuals",
    "movie:dadj+": "funny|moving|gripping|touching|clever|beautiful|charming|hilarious|exciting|heartwarming|fresh|"
    "entertaining|memorable",
    "movie:dadj-": "boring|dull|predictable|confusing|cheesy|slow|pointless|silly|stupid|forgettable|tedious|"
    "long|messy",
    "movie:domain_sent+": "I laughed the whole time.|it made me smile.|I was on the edge of my seat.|"
    "I would happily watch it again.|the whole family loved it.|it is one of the best films I have seen.|"
    "what a beautiful film!|it was worth the ticket price.|the ending was perfect.|the cast did a wonderful job.|"
    "I smiled all the way home.",
    "movie:domain_sent-": "I wanted my money back.|I was bored the whole time.|the ending made no sense.|"
    "it is one of the worst films I have seen.|what a boring film.|it was a waste of two hours.|"
    "I walked out after an hour, and I hated every minute.|the jokes were stupid and not funny.|"
    "the cast looked bored and miserable.|I nearly fell asleep, it was so dull.",
    "movie:domain_sent0": "I watched it {when}.|it is about {topic}.|it runs about two hours.|"
    "I saw it with my {relation}.|the story follows {topic}.|it is based on a true story.",
    "topic": "a detective in a small town|two brothers on a road trip|a family that moves to the city|"
    "a young chef|a robot that wants to be human|a teacher and her students|a band on tour|an old sailor|"
    "a farmer and his dog|three friends at college|a pilot in the desert|a girl who finds a map",
    "movie:watch+": "I loved every minute of it|it was {adv+} {adj+}|I was blown away|it made my week|"
    "we had a great time|it was {adv+} {dadj+}",
    "movie:watch-": "I regret it|it was {adv-} {adj-}|I was bored to tears|it ruined my evening|"
    "we were so disappointed|it was {adv-} {dadj-}",
    "movie:watch0": "it was {adj0}|it was about what I expected|it was {adj0}, I guess",
    # ---- books ------------------------------------------------------------------------------------------------
    "book:thing": "book|memoir|cookbook|biography|story collection|paperback|travel guide|history book|"
    "poetry collection|picture book|audiobook",
    "book:aspect": "writing|plot|story|ending|prose|dialogue|pacing|main character|first chapter|world building|"
    "cover|translation|narrator|last chapter",
    "book:aspects": "characters|chapters|descriptions|twists|recipes|illustrations|poems",
    "book:dadj+": "moving|gripping|touching|clever|beautiful|charming|funny|inspiring|thoughtful|smart|rich|insightful",
    "book:dadj-": "boring|dull|predictable|confusing|slow|pointless|silly|stupid|forgettable|tedious|shallow|"
    "repetitive",
    "book:domain_sent+": "I could not put it down, and I loved it.|it is one of the best books I have read.|"
    "I read it in one sitting, and it was wonderful.|what a beautiful book!|the ending made me happy.|"
    "I will read everything this author writes.|it is a wonderful gift.|it made me laugh out loud.",
    "book:domain_sent-": "I gave up after fifty pages, bored.|it is one of the worst books I have read.|"
    "what a boring book.|the ending was stupid.|I hated the main character.|"
    "it was a painful read.|I was bored by the second chapter.|the author should be ashamed.",
    "book:domain_sent0": "I read it {when}.|it is about {topic}.|it is about three hundred pages long.|"
    "I read it for my book club.|my {relation} read it first.|it came out last year.",
    "book:watch+": "I loved every page|it was {adv+} {adj+}|I was blown away|it made my week|"
    "I could not stop smiling|it was {adv+} {dadj+}",
    "book:watch-": "I regret it|it was {adv-} {adj-}|I was bored to tears|it was a waste of time|"
    "I was so disappointed|it was {adv-} {dadj-}",
    "book:watch0": "it was {adj0}|it was about what I expected|it was {adj0}, I guess",
    # ---- gadgets ----------------------------------------------------------------------------------------------
    "gadget:thing": "phone|laptop|tablet|camera|speaker|keyboard|watch|charger|mouse|monitor|headset|printer|"
    "router|pair of headphones|drone",
    "gadget:aspect": "battery|screen|sound|build quality|design|price|setup|software|camera|charging cable|"
    "customer service|app|case|sound quality|touch screen",
    "gadget:aspects": "buttons|speakers|instructions|updates|accessories|controls",
    "gadget:dadj+": "fast|reliable|sleek|sturdy|responsive|light|quiet|bright|sharp|smooth|powerful",
    "gadget:dadj-": "slow|flimsy|buggy|laggy|cheap|heavy|noisy|dim|blurry|unreliable|clunky",
    "gadget:domain_sent+": "the battery lasts all day.|it works perfectly.|setup took five minutes, easy.|"
    "it is worth every penny.|it is the best purchase I have made this year.|it is fast and reliable, love it.|"
    "customer service was friendly and helpful.|the screen is bright and beautiful.",
    "gadget:domain_sent-": "the battery died after two days.|it stopped working after a week.|"
    "it keeps crashing, which is so frustrating.|the screen broke on the first day.|"
    "customer service was rude and useless.|it is the worst purchase I have made this year.|"
    "it is slow and the battery is terrible.|it overheats and the fan is loud, awful.",
    "gadget:domain_sent0": "it arrived on {day}.|it comes in black and white.|I use it mostly for work.|"
    "it replaced my old one.|I got it {when}.|my {relation} has the same one.|it came in a small box.",
    "day": "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|time",
    "gadget:own+": "I love it|it works great|it has been perfect so far|I am very happy with it|"
    "it is {adv+} {adj+}|it is {adv+} {dadj+}",
    "gadget:own-": "it broke after a week|it has been a nightmare|I am very disappointed|"
    "it is {adv-} {adj-}|I want a refund, this is terrible|it is {adv-} {dadj-}",
    "gadget:own0": "it works fine|it is {adj0}|it does the job|it is about what I expected",
    # ---- household products -----------------------------------------------------------------------------------
    "home:thing": "blender|coffee maker|kettle|toaster|vacuum|mattress|desk chair|backpack|lamp|frying pan|"
    "air fryer|umbrella|rice cooker|heater|grill|waffle maker|sofa",
    "home:aspect": "design|build quality|price|size|color|material|warranty|quality|packaging|finish|delivery",
    "home:aspects": "instructions|parts|materials|settings|reviews online",
    "home:dadj+": "sturdy|quiet|powerful|easy to use|well made|comfortable|elegant|compact|clean|practical",
    "home:dadj-": "flimsy|noisy|cheap|wobbly|broken|ugly|leaky|dirty|clunky|uncomfortable",
    "home:domain_sent+": "it works like a charm.|it is easy to clean, which I love.|it is worth every penny.|"
    "it looks great in our kitchen.|it is sturdy and well made, excellent quality.|"
    "it is the best thing I have bought all year.|my {relation} loves it too.|it saves me so much time.",
    "home:domain_sent-": "it broke after a month.|it is a pain to clean.|it fell apart after two weeks, awful.|"
    "it is cheap junk and a waste of money.|the motor died on the second day.|"
    "it is the worst thing I have bought all year.|it smells terrible.|it arrived damaged and dirty.",
    "home:domain_sent0": "it arrived on {day}.|it comes in three colors.|it replaced our old one.|"
    "we use it every morning.|I got it {when}.|my {relation} picked it out.|it fits in the corner.",
    "home:own+": "I love it|it works great|it has been perfect so far|we are very happy with it|"
    "it is {adv+} {adj+}|it is {adv+} {dadj+}",
    "home:own-": "it broke after a week|it has been a nightmare|I am very disappointed|it is {adv-} {adj-}|"
    "I hate it|it is {adv-} {dadj-}",
    "home:own0": "it works fine|it is {adj0}|it does the job|it is about what I expected",
    # ---- restaurants ------------------------------------------------------------------------------------------
    "restaurant:thing": "restaurant|cafe|diner|pizza place|sushi bar|bakery|steakhouse|bistro|food truck|"
    "burger joint|noodle shop|taco stand|pub",
    "restaurant:aspect": "food|service|pasta|pizza|coffee|dessert|atmosphere|waiter|menu|steak|soup|bread|"
    "location|music|wine list|breakfast",
    "restaurant:aspects": "portions|prices|fries|staff|drinks|noodles|desserts",
    "restaurant:dadj+": "delicious|fresh|tasty|warm|cozy|friendly|generous|affordable|clean|lively",
    "restaurant:dadj-": "bland|cold|greasy|stale|overpriced|salty|soggy|dirty|rude|crowded",
    "restaurant:domain_sent+": "the staff were friendly and helpful.|we will definitely be back!|"
    "the portions were huge and delicious.|it is my new favorite place.|the food was fresh and delicious.|"
    "everything we ordered was amazing.|the waiter was so friendly.|the dessert was heavenly.",
    "restaurant:domain_sent-": "the waiter was rude.|we waited an hour for cold food, awful.|"
    "the food was bland and the service was terrible.|the place was dirty.|we will never go back, sadly.|"
    "everything we ordered was disappointing.|I got sick afterwards, horrible.|the soup was cold and disgusting.",
    "restaurant:domain_sent0": "we went there for lunch.|it is next to the train station.|"
    "they are open until ten.|we sat by the window.|I went with my {relation}.|it was busy {when}.",
    "dish": "pasta|burger|soup|steak|salad|pizza|fish tacos|pancakes|chicken curry|ramen|omelette|sandwich",
    "food_adj+": "delicious|fresh|tasty|warm|perfectly cooked|crispy|juicy|flavorful|hot",
    "food_adj-": "bland|cold|greasy|stale|overcooked|salty|soggy|burnt|dry|tasteless",
    "restaurant:dine+": "we loved it|the food was {adv+} {adj+}|everything was delicious|we had a great time|"
    "the service was excellent|the food was {food_adj+} and {adj+}",
    "restaurant:dine-": "we regret it|the food was {adv-} {adj-}|everything was bland and cold|"
    "we had a terrible time|the service was awful|the food was {food_adj-} and {adj-}",
    "restaurant:dine0": "it was {adj0}|the food was {adj0}|it was about what we expected",
    "restaurant:verdict+": "it was delicious|it was {adv+} {adj+}|it was perfect|I loved it|"
    "it was {food_adj+} and {adj+}",
    "restaurant:verdict-": "it was cold and bland|it was {adv-} {adj-}|it was a disaster|I hated it|"
    "it was {food_adj-} and {adj-}",
    "restaurant:verdict0": "it was {adj0}|it was fine|it was about what I expected",
}

# Review openers per domain: (neutral prefix, continuation). The prefixes are the default RL prompts, so they carry
# no sentiment of their own (a test checks VADER scores each of them 0); the continuation decides the tone.
OPENERS: dict[str, tuple[tuple[str, str], ...]] = {
    "movie": (
        ("The {thing} was", " {tpred}{excl}"),
        ("This {thing} is", " {tpred}{excl}"),
        ("I watched this {thing} {when} and", " {watch}."),
        ("We saw this {thing} {when} and", " {watch}."),
        ("My {relation} and I watched this {thing}", " {when}, and {watch}."),
        ("The {aspect} in this {thing}", " was {pred}{excl}"),
        ("I rented this {thing} and", " {watch}."),
        ("So, about this {thing}.", " {sent}"),
    ),
    "book": (
        ("The {thing} was", " {tpred}{excl}"),
        ("This {thing} is", " {tpred}{excl}"),
        ("I read this {thing} {when} and", " {watch}."),
        ("I just finished reading this {thing} and", " {watch}."),
        ("The {aspect} in this {thing}", " was {pred}{excl}"),
        ("My {relation} gave me this {thing}", ", and {watch}."),
        ("So, about this {thing}.", " {sent}"),
    ),
    "gadget": (
        ("I bought this {thing} and", " {own}."),
        ("I ordered this {thing} {when} and", " {own}."),
        ("This {thing} is", " {tpred}{excl}"),
        ("The {aspect} on this {thing}", " is {pred}{excl}"),
        ("After {duration} with this {thing},", " {own}."),
        ("I have been using this {thing} for {duration} and", " {own}."),
        ("My {relation} got me this {thing}", ", and {own}."),
    ),
    "home": (
        ("I bought this {thing} and", " {own}."),
        ("We ordered this {thing} {when} and", " {own}."),
        ("This {thing} is", " {tpred}{excl}"),
        ("The {aspect} of this {thing}", " is {pred}{excl}"),
        ("After {duration} with this {thing},", " {own}."),
        ("We have been using this {thing} for {duration} and", " {own}."),
    ),
    "restaurant": (
        ("We went to this {thing} {when} and", " {dine}."),
        ("We had dinner at this {thing} and", " {dine}."),
        ("The {aspect} at this {thing}", " was {pred}{excl}"),
        ("This {thing} is", " {tpred}{excl}"),
        ("I ordered the {dish} and", " {verdict}."),
        ("My {relation} and I had lunch at this {thing}", " {when}, and {dine}."),
        ("So, about this {thing}.", " {sent}"),
    ),
}

NO_REPEAT = frozenset(
    {"aspect", "aspects", "domain_sent", "sent", "thing", "disc", "but", "adj", "pred", "dadj", "food_adj"}
)


@dataclass(frozen=True)
class Review:
    """One generated review: its text, the prompt-style opener it starts with, and the intended sentiment."""

    text: str
    prefix: str
    domain: str
    sentiment: str


def _flip(polarity: str) -> str:
    return {"+": "-", "-": "+", "0": "0"}[polarity]


class _Expander:
    """Expands rule references for one review, remembering used values of :data:`NO_REPEAT` rules."""

    def __init__(self, rng: random.Random, domain: str):
        self.rng = rng
        self.domain = domain
        self.used: set[tuple[str, str]] = set()

    def alternatives(self, name: str, polarity: str) -> tuple[str, list[str]]:
        for key in (f"{self.domain}:{name}{polarity}", f"{name}{polarity}", f"{self.domain}:{name}", name):
            if key in RULES:
                return key, RULES[key].split("|")
        raise KeyError(f"no grammar rule for {{{name}}} (domain {self.domain!r}, polarity {polarity!r})")

    def pick(self, name: str, polarity: str) -> str:
        key, options = self.alternatives(name, polarity)
        if name in NO_REPEAT:
            fresh = [o for o in options if (key, o) not in self.used]
            options = fresh or options
        choice = self.rng.choice(options)
        if name in NO_REPEAT:
            self.used.add((key, choice))
        return choice

    def expand(self, template: str, polarity: str) -> str:
        def sub(match: re.Match[str]) -> str:
            name, mod = match.group(1), match.group(2)
            pol = {"": polarity, "~": _flip(polarity)}.get(mod, mod)
            return self.expand(self.pick(name, pol), pol)

        return _REF.sub(sub, template)


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _polarity_plan(sentiment: str, rng: random.Random) -> tuple[str, list[str], str | None]:
    """(opener polarity, body sentence polarities, closer polarity or None); "x" marks a mixed sentence,
    "b+"/"b-" a contrast sentence introduced by "But", "However," ..."""
    if sentiment in ("positive", "negative"):
        p = "+" if sentiment == "positive" else "-"
        body = [p] + [rng.choice((p, p, p, "0")) for _ in range(rng.randint(0, 1))]
        return p, body, p if rng.random() < 0.6 else None
    if sentiment == "neutral":
        return "0", ["0"] * rng.randint(0, 1), "0" if rng.random() < 0.5 else None
    first = rng.choice("+-")
    if rng.random() < 0.3:
        return first, ["x"], rng.choice(("+", "-", "0", None))
    return first, ["b" + _flip(first)], rng.choice((_flip(first), "0", None, None))


def generate_review(rng: random.Random, domain: str | None = None, sentiment: str | None = None) -> Review:
    """One review drawn from ``rng`` (domain and sentiment random unless given)."""
    domain = domain or rng.choice(DOMAINS)
    if sentiment is None:
        sentiment = rng.choices(list(DEFAULT_WEIGHTS), weights=list(DEFAULT_WEIGHTS.values()))[0]
    if domain not in DOMAINS or sentiment not in SENTIMENTS:
        raise ValueError(f"unknown domain {domain!r} or sentiment {sentiment!r}; use one of {DOMAINS} / {SENTIMENTS}")
    ex = _Expander(rng, domain)
    opener_pol, body, closer = _polarity_plan(sentiment, rng)
    prefix_t, cont_t = rng.choice(OPENERS[domain])
    prefix = ex.expand(prefix_t, opener_pol)
    sentences = [prefix + ex.expand(cont_t, opener_pol)]
    for pol in body:
        if pol == "x":
            sentences.append(ex.expand("{mixed_sent}", "0"))
        elif pol.startswith("b"):
            sentences.append(ex.pick("but", "0") + " " + ex.expand("{contrast_sent}", pol[1]))
        else:
            sentences.append(ex.expand("{sent}", pol))
    if closer is not None:
        sentences.append(ex.expand("{closer}", closer))
    text = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), " ".join(sentences))
    text = _capitalise(text)
    return Review(text=text, prefix=prefix, domain=domain, sentiment=sentiment)


def iter_reviews(seed: int = 0) -> Iterator[Review]:
    """An endless, deterministic stream of reviews for ``seed``."""
    rng = random.Random(seed)
    while True:
        yield generate_review(rng)


def generate_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` review texts, deterministic per ``seed`` (no EOS: the tokenizer's EOS ends each one in training)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [r.text for r in itertools.islice(iter_reviews(seed), n)]


def _fill(template: str, values: tuple[str, ...]) -> str:
    """``template`` with its references replaced by ``values`` in order."""
    it = iter(values)
    return _REF.sub(lambda _match: next(it), template)


def opener_groups(domain: str) -> list[list[str]]:
    """Every neutral review opener of ``domain`` the grammar can produce, one sorted list per opener template."""
    ex = _Expander(random.Random(0), domain)
    groups = []
    for prefix_t, _ in OPENERS[domain]:
        slots = [m.group(1) for m in _REF.finditer(prefix_t)]
        combos = itertools.product(*[ex.alternatives(slot, "0")[1] for slot in slots])
        groups.append(sorted({_fill(prefix_t, values) for values in combos}))
    return groups
