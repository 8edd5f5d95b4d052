"""What the demo corpus says and who says it: voices, sentences, back-channels, dialogue scripts
(two-party conversations and 3-4 party meetings).

Owns the content only (all text written for this project, free to redistribute). It must not
synthesise, place or write audio: `speak.py` turns text into clips, `conversation.py` places them.

Mandarin is synthesised from tone-numbered pinyin (`say`) because the `cmn` voice of common
espeak-ng builds lacks a full character dictionary and reads tone digits aloud as English numbers;
the transcript (`text`) stays in Chinese characters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

SpeakerLabel = Literal["A", "B", "C", "D"]
SPEAKER_LABELS: tuple[SpeakerLabel, ...] = ("A", "B", "C", "D")
"""Script speakers in order: A and B in every conversation, C and D in meetings."""
Entry = Literal["gap", "overlap", "interrupt"]


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng voice variant with its own rate and pitch."""

    id: str  # speaker id written to the manifest, e.g. "en_m3"
    language: str  # ISO 639-1
    espeak_voice: str  # espeak-ng voice name with variant, e.g. "en-us+m3"
    rate_wpm: int
    pitch: int  # espeak-ng pitch, 0..99

    @property
    def gender(self) -> str:
        """`female` or `male`, from the espeak-ng variant (`+f3`, `+m2`): the gender label the
        manifest gives this voice's utterances."""
        variant = self.espeak_voice.rpartition("+")[2]
        if variant in _NAMED_VARIANT_GENDER:
            return _NAMED_VARIANT_GENDER[variant]
        if variant[:1] not in ("f", "m"):
            raise ValueError(f"voice {self.id!r}: variant {variant!r} names no gender")
        return "female" if variant.startswith("f") else "male"


@dataclass(frozen=True)
class Phrase:
    """A transcript and, where the synthesiser needs another spelling, what it should read."""

    text: str
    say: str | None = None

    @property
    def spoken(self) -> str:
        return self.say if self.say is not None else self.text


@dataclass(frozen=True)
class Line:
    """One main turn of a dialogue script.

    `entry` says how the turn starts relative to the previous main turn: after a pause ("gap"),
    before the previous turn has finished ("overlap"), or by cutting the previous speaker off
    ("interrupt"; the previous line must then hold exactly one comma, and its speaker stops at
    that comma's pause). `backchannel` asks for the listener to say "mm-hm" (or the language's
    equivalent) while this turn is going on; `listener` says who (in a two-party conversation the
    other speaker, its default; a meeting's script must name one).
    """

    speaker: SpeakerLabel
    phrase: Phrase
    entry: Entry = "gap"
    backchannel: bool = False
    listener: SpeakerLabel | None = None


@dataclass(frozen=True)
class ConversationScript:
    """A scripted conversation and how its recording is laid out: two-party, or a meeting when
    `more_voices` adds speakers C (and D). Meetings are mono mixes, as far-field meeting
    corpora (AliMeeting) are once their array is beamformed or one channel is taken."""

    stem: str
    language: str
    voice_a: str
    voice_b: str
    stereo: bool  # True: one speaker per channel (A = 0, B = 1); False: mono mix
    lines: tuple[Line, ...]
    more_voices: tuple[str, ...] = ()  # voices of speakers C, D: a meeting
    far_field: bool = False  # mono, heard from across a room (`minmo.audio.farfield`)

    def __post_init__(self) -> None:
        labels = set(self.voice_ids)
        if len(labels) > len(SPEAKER_LABELS):
            raise ValueError(f"{self.stem}: at most {len(SPEAKER_LABELS)} speakers")
        if self.is_meeting and self.stereo:
            raise ValueError(f"{self.stem}: a meeting is a mono mix")
        if self.far_field and self.stereo:
            raise ValueError(f"{self.stem}: a far-field recording is one distant microphone")
        for i, line in enumerate(self.lines):
            if line.speaker not in labels or (line.listener or "A") not in labels:
                raise ValueError(f"{self.stem} line {i}: a speaker outside {sorted(labels)}")
            if line.listener == line.speaker:
                raise ValueError(f"{self.stem} line {i}: the listener is the speaker")
            if line.backchannel and self.is_meeting and line.listener is None:
                raise ValueError(f"{self.stem} line {i}: a meeting's back-channel needs a listener")
        if {line.speaker for line in self.lines} != labels:
            raise ValueError(f"{self.stem}: every speaker must have a line")

    @property
    def voice_ids(self) -> dict[SpeakerLabel, str]:
        """Speaker label -> voice id, in label order."""
        ids = (self.voice_a, self.voice_b, *self.more_voices)
        return dict(zip(SPEAKER_LABELS, ids, strict=False))

    @property
    def is_meeting(self) -> bool:
        return len(self.more_voices) > 0


VOICES: tuple[Voice, ...] = (
    Voice("en_m3", "en", "en-us+m3", 165, 42),
    Voice("en_f2", "en", "en-gb+f2", 172, 66),
    Voice("de_f3", "de", "de+f3", 160, 62),
    Voice("de_m2", "de", "de+m2", 152, 38),
    Voice("es_m4", "es", "es+m4", 168, 45),
    Voice("es_f4", "es", "es-419+f4", 175, 68),
    Voice("fr_f1", "fr", "fr-be+f1", 165, 60),  # fr-fr+f1 vs fr-fr+m5 differ in pitch only
    Voice("fr_m5", "fr", "fr-fr+m5", 158, 36),
    Voice("zh_f5", "zh", "cmn-latn-pinyin+f5", 175, 64),
    Voice("zh_m1", "zh", "cmn-latn-pinyin+m1", 168, 40),
)


MEETING_VOICES: tuple[Voice, ...] = (
    Voice("en_ca_f4", "en", "en-029+f4", 170, 72),
    Voice("en_rp_f3", "en", "en-gb-x-rp+f3", 168, 58),
    Voice("en_ny_m1", "en", "en-us-nyc+m1", 175, 48),
    Voice("en_andy", "en", "en-us+Andy", 160, 45),
    Voice("en_grandma", "en", "en-us+grandma", 150, 55),
)
"""Extra voices the meetings need (a meeting has 3-4 speakers of one language). They speak no
utterances: `plan_utterances` alternates VOICES only, so adding these left the utterance files
unchanged. Chosen by measurement: the mean Resemblyzer d-vectors of every pair in one meeting
are at most 0.77 cosine-similar, below the offline backend's new_speaker_similarity (0.83), so a
count estimate can find them all. Accent and pitch variants of one base voice are not enough
(en-us+m3, en-gb+f2, en-us-nyc+m1, en-gb-scotland+m6 measured 0.89-0.94 alike); the named
variants (Andy, grandma) and other base voices (en-029, en-gb-x-rp) are."""

_NAMED_VARIANT_GENDER = {"Andy": "male", "grandma": "female"}
"""Gender of espeak-ng variants whose name is not f<n> / m<n>."""


def voice(voice_id: str) -> Voice:
    """Look a voice up by id; a typo in a script should fail loudly, not pick a default."""
    for v in (*VOICES, *MEETING_VOICES):
        if v.id == voice_id:
            return v
    known = ", ".join(v.id for v in (*VOICES, *MEETING_VOICES))
    raise KeyError(f"unknown demo voice {voice_id!r}; known voices: {known}")


SENTENCES: dict[str, tuple[Phrase, ...]] = {
    "en": (
        Phrase("The morning train to the city was twenty minutes late."),
        Phrase("Could you please turn the lights off when you leave the room?"),
        Phrase("My sister planted tomatoes and basil in the garden this spring."),
        Phrase("We should book the tickets before the prices go up."),
        Phrase("The library closes early on Sundays, so let's go tomorrow."),
        Phrase("He forgot his umbrella and got soaked on the way home."),
        Phrase("I usually drink a cup of tea before I start working."),
        Phrase("The meeting has been moved to Thursday afternoon at three."),
        Phrase("There is a small bakery around the corner that sells fresh bread."),
        Phrase("Please remember to send me the report by the end of the week."),
        Phrase("The children built a tall tower out of wooden blocks."),
    ),
    "de": (
        Phrase("Der Zug nach Berlin fährt in zehn Minuten ab."),
        Phrase("Kannst du mir bitte das Salz geben?"),
        Phrase("Am Wochenende wollen wir in den Bergen wandern gehen."),
        Phrase("Das Museum ist montags leider geschlossen."),
        Phrase("Ich habe heute Morgen frische Brötchen beim Bäcker gekauft."),
        Phrase("Die Besprechung beginnt pünktlich um neun Uhr."),
        Phrase("Im Herbst fallen die bunten Blätter von den Bäumen."),
        Phrase("Mein Bruder lernt seit einem Jahr Gitarre spielen."),
        Phrase("Vergiss nicht, die Fenster zu schließen, bevor du gehst."),
    ),
    "es": (
        Phrase("El autobús llega a la parada cada quince minutos."),
        Phrase("Mañana vamos a cenar en casa de mis abuelos."),
        Phrase("¿Podrías cerrar la ventana, por favor? Hace un poco de frío."),
        Phrase("La biblioteca abre a las nueve de la mañana."),
        Phrase("Mi hermano prepara una paella deliciosa los domingos."),
        Phrase("Este verano queremos viajar a la costa del norte."),
        Phrase("No olvides regar las plantas mientras estoy fuera."),
        Phrase("El mercado del barrio vende fruta muy fresca."),
        Phrase("Los niños juegan en el parque hasta que se pone el sol."),
    ),
    "fr": (
        Phrase("Le train pour Lyon part dans un quart d'heure."),
        Phrase("Nous avons acheté du pain frais à la boulangerie ce matin."),
        Phrase("Pourrais-tu fermer la porte en sortant, s'il te plaît ?"),
        Phrase("Il pleut depuis trois jours sans s'arrêter."),
        Phrase("Ma grand-mère prépare une excellente soupe aux légumes."),
        Phrase("Le musée est ouvert tous les jours sauf le mardi."),
        Phrase("Cet été, nous irons camper au bord d'un lac."),
        Phrase("N'oublie pas d'apporter ton parapluie demain."),
        Phrase("La réunion a été reportée à la semaine prochaine."),
    ),
    "zh": (
        Phrase(
            "今天天气很好，我们去公园散步吧。",
            "jin1 tian1 tian1 qi4 hen3 hao3, wo3 men5 qu4 gong1 yuan2 san4 bu4 ba5.",
        ),
        Phrase(
            "我每天早上喝一杯咖啡。",
            "wo3 mei3 tian1 zao3 shang5 he1 yi4 bei1 ka1 fei1.",
        ),
        Phrase("请问，火车站怎么走？", "qing3 wen4, huo3 che1 zhan4 zen3 me5 zou3?"),
        Phrase(
            "这家饭店的面条非常好吃。",
            "zhe4 jia1 fan4 dian4 de5 mian4 tiao2 fei1 chang2 hao3 chi1.",
        ),
        Phrase("明天下午我们开会。", "ming2 tian1 xia4 wu3 wo3 men5 kai1 hui4."),
        Phrase(
            "他的妹妹在大学学习音乐。",
            "ta1 de5 mei4 mei5 zai4 da4 xue2 xue2 xi2 yin1 yue4.",
        ),
        Phrase("周末我想在家看书。", "zhou1 mo4 wo3 xiang3 zai4 jia1 kan4 shu1."),
        Phrase(
            "外面下雨了，别忘了带伞。",
            "wai4 mian4 xia4 yu3 le5, bie2 wang4 le5 dai4 san3.",
        ),
    ),
}

BACKCHANNELS: dict[str, tuple[Phrase, ...]] = {
    "en": (Phrase("mm-hm"), Phrase("yeah"), Phrase("right"), Phrase("uh-huh"), Phrase("okay")),
    "de": (Phrase("hm"), Phrase("ja"), Phrase("genau"), Phrase("okay"), Phrase("stimmt")),
    "es": (Phrase("ajá"), Phrase("sí"), Phrase("claro"), Phrase("vale"), Phrase("ya")),
    "fr": (Phrase("oui"), Phrase("d'accord"), Phrase("ah bon"), Phrase("ouais"), Phrase("voilà")),
    "zh": (
        Phrase("嗯", "en4"),
        Phrase("对", "dui4"),
        Phrase("是的", "shi4 de5"),
        Phrase("好的", "hao3 de5"),
        Phrase("对对", "dui4 dui4"),
    ),
}


def _line(
    speaker: SpeakerLabel,
    text: str,
    say: str | None = None,
    entry: Entry = "gap",
    backchannel: bool = False,
    listener: SpeakerLabel | None = None,
) -> Line:
    return Line(speaker, Phrase(text, say), entry, backchannel or listener is not None, listener)


CONVERSATIONS: tuple[ConversationScript, ...] = (
    ConversationScript(
        stem="en_weekend_hike",
        language="en",
        voice_a="en_m3",
        voice_b="en_f2",
        stereo=True,
        lines=(
            _line("A", "Hey, any plans for the weekend? I was thinking about a hike."),
            _line("B", "That sounds lovely. Which trail did you have in mind?"),
            _line(
                "A",
                "There is a loop around the lake that takes about four hours, and the view "
                "from the ridge is supposed to be amazing.",
                backchannel=True,
            ),
            _line(
                "B",
                "Four hours is fine, as long as we start early. Does the parking fill up fast?",
                entry="overlap",
            ),
            _line(
                "A",
                "Last time I went there with my brother, we had to park way down on the main "
                "road and walk for ages",
            ),
            _line(
                "B",
                "Oh, then let's definitely go early. I will bring sandwiches.",
                entry="interrupt",
            ),
            _line(
                "A",
                "Perfect. I will check the weather forecast tonight and send you a message.",
                entry="overlap",
                backchannel=True,
            ),
            _line("B", "Great, talk to you later then."),
            _line("A", "Bye for now. See you on Saturday!"),
        ),
    ),
    ConversationScript(
        stem="en_missing_parcel",
        language="en",
        voice_a="en_f2",
        voice_b="en_m3",
        stereo=False,
        lines=(
            _line("A", "Hi, I am calling about a package that was supposed to arrive yesterday."),
            _line("B", "I am sorry to hear that. Could you give me the tracking number, please?"),
            _line("A", "Sure, it is K L four eight two nine."),
            _line(
                "B",
                "Thank you. The parcel left our warehouse on Monday, but it was held at the "
                "local depot because the apartment number was missing.",
                backchannel=True,
            ),
            _line("A", "Oh, that would explain it. I live in apartment twelve.", entry="overlap"),
            _line(
                "B",
                "Let me add that to the address for you, and we can schedule a new delivery "
                "for tomorrow morning",
            ),
            _line(
                "A",
                "Actually, could it come in the afternoon? I am at work until two.",
                entry="interrupt",
            ),
            _line(
                "B",
                "Of course. The afternoon slot is between two and six, and the driver will "
                "call you before arriving.",
                backchannel=True,
            ),
            _line("A", "That works perfectly. Thank you so much for your help.", entry="overlap"),
            _line("B", "You are welcome. Have a nice day."),
        ),
    ),
    ConversationScript(
        stem="de_umzug",
        language="de",
        voice_a="de_f3",
        voice_b="de_m2",
        stereo=True,
        lines=(
            _line("A", "Hallo Thomas, hast du am Samstag Zeit? Ich ziehe um."),
            _line("B", "Ja, ich glaube schon. Wie viele Kisten hast du?"),
            _line(
                "A",
                "Ungefähr dreißig Kisten, dazu das Sofa, den Schreibtisch und zwei große Regale.",
                backchannel=True,
            ),
            _line(
                "B",
                "Das schaffen wir nicht allein. Mein Bruder hat einen kleinen Transporter.",
            ),
            _line("A", "Das wäre super, dann müssen wir nur einmal fahren.", entry="overlap"),
            _line(
                "B",
                "Wann sollen wir am Samstag anfangen, lieber um acht oder erst um neun",
            ),
            _line(
                "A",
                "Um acht bitte. Der Vermieter kommt schon um zwölf.",
                entry="interrupt",
            ),
            _line(
                "B",
                "Alles klar, dann bringe ich Brötchen und Kaffee mit, und wir legen früh los.",
                backchannel=True,
            ),
            _line("A", "Du bist ein Schatz. Bis Samstag!", entry="overlap"),
        ),
    ),
    ConversationScript(
        stem="es_restaurante",
        language="es",
        voice_a="es_f4",
        voice_b="es_m4",
        stereo=False,
        lines=(
            _line("A", "Oye, ¿conoces algún restaurante bueno cerca de la oficina?"),
            _line(
                "B",
                "Sí, hay uno pequeño en la calle Mayor que tiene un menú del día muy "
                "económico, con primer plato, segundo y postre por doce euros.",
                backchannel=True,
            ),
            _line("A", "¡Qué bien! ¿Y la comida es casera?", entry="overlap"),
            _line(
                "B",
                "La dueña cocina todo por la mañana temprano, y los jueves siempre hay paella "
                "valenciana",
            ),
            _line(
                "A",
                "¡Los jueves! Pues vamos el jueves que viene. Yo invito.",
                entry="interrupt",
            ),
            _line(
                "B",
                "Trato hecho. Reservo una mesa para las dos y media, porque a esa hora hay "
                "menos gente y no tenemos que esperar.",
                backchannel=True,
            ),
            _line("A", "Perfecto. ¿Le digo también a Marta?", entry="overlap"),
            _line("B", "Claro, cuantos más, mejor. Reservo para tres."),
            _line("A", "Genial. ¡Hasta el jueves!"),
        ),
    ),
    ConversationScript(
        stem="fr_vacances",
        language="fr",
        voice_a="fr_f1",
        voice_b="fr_m5",
        stereo=False,
        lines=(
            _line("A", "Alors, tu as décidé où tu pars en vacances cet été ?"),
            _line(
                "B",
                "Pas encore. J'hésite entre la Bretagne et les Alpes, mais mes enfants "
                "préfèrent la mer parce qu'ils adorent construire des châteaux de sable.",
                backchannel=True,
            ),
            _line("A", "La Bretagne, c'est magnifique en juillet.", entry="overlap"),
            _line("B", "Oui, mais il fait parfois un peu frais. Tu y es déjà allée ?"),
            _line(
                "A",
                "Nous y sommes allés trois fois déjà, nous avions loué une petite maison près "
                "de la plage",
            ),
            _line(
                "B",
                "Ah, tu pourrais m'envoyer l'adresse ? Ce serait parfait pour nous.",
                entry="interrupt",
            ),
            _line(
                "A",
                "Bien sûr, je te l'envoie ce soir avec le numéro du propriétaire. Il est très "
                "sympathique et les prix sont raisonnables.",
                backchannel=True,
            ),
            _line("B", "Merci beaucoup, c'est vraiment gentil.", entry="overlap"),
            _line("A", "Avec plaisir. Et toi, tu as besoin d'autre chose pour le voyage ?"),
            _line("B", "Non, ça ira. Bonne soirée et à bientôt !"),
        ),
    ),
    ConversationScript(
        stem="zh_zhoumo",
        language="zh",
        voice_a="zh_f5",
        voice_b="zh_m1",
        stereo=True,
        lines=(
            _line(
                "A",
                "你周末有空吗？一起去看电影吧。",
                "ni3 zhou1 mo4 you3 kong4 ma5? yi4 qi3 qu4 kan4 dian4 ying3 ba5.",
            ),
            _line(
                "B",
                "好啊，最近有什么好看的电影？",
                "hao3 a5, zui4 jin4 you3 shen2 me5 hao3 kan4 de5 dian4 ying3?",
            ),
            _line(
                "A",
                "有一部新的科幻片，听说特效非常好，故事也很感人。",
                "you3 yi2 bu4 xin1 de5 ke1 huan4 pian4, ting1 shuo1 te4 xiao4 fei1 chang2 "
                "hao3, gu4 shi5 ye3 hen3 gan3 ren2.",
                backchannel=True,
            ),
            _line(
                "B",
                "那我们周六下午去吧。",
                "na4 wo3 men5 zhou1 liu4 xia4 wu3 qu4 ba5.",
                entry="overlap",
            ),
            _line(
                "A",
                "周六下午我要上英语课，我们可以晚上七点去",
                "zhou1 liu4 xia4 wu3 wo3 yao4 shang4 ying1 yu3 ke4, wo3 men5 ke3 yi3 wan3 "
                "shang5 qi1 dian3 qu4",
            ),
            _line(
                "B",
                "没关系。那就晚上去，看完一起吃饭。",
                "mei2 guan1 xi5. na4 jiu4 wan3 shang5 qu4, kan4 wan2 yi4 qi3 chi1 fan4.",
                entry="interrupt",
            ),
            _line(
                "A",
                "好主意，电影院旁边有一家很有名的火锅店，我们可以早点去。",
                "hao3 zhu3 yi5, dian4 ying3 yuan4 pang2 bian1 you3 yi4 jia1 hen3 you3 ming2 "
                "de5 huo3 guo1 dian4, wo3 men5 ke3 yi3 zao3 dian3 qu4.",
                backchannel=True,
            ),
            _line(
                "B",
                "太好了，我来订电影票。",
                "tai4 hao3 le5, wo3 lai2 ding4 dian4 ying3 piao4.",
                entry="overlap",
            ),
            _line("A", "好的，周六见！", "hao3 de5, zhou1 liu4 jian4!"),
        ),
    ),
)


MEETINGS: tuple[ConversationScript, ...] = (
    ConversationScript(
        stem="en_team_standup",
        language="en",
        voice_a="en_m3",
        voice_b="en_ca_f4",
        stereo=False,
        more_voices=("en_andy", "en_grandma"),
        lines=(
            _line("A", "Good morning everyone, let's keep this short. Who wants to start?"),
            _line(
                "B",
                "I can go first. Yesterday I finished the login page, and today I am writing "
                "the tests for the password reset form.",
                listener="A",
            ),
            _line("C", "Did you also fix the bug with the empty email field?", entry="overlap"),
            _line("B", "Yes, that one is done. It was a missing check on the server."),
            _line(
                "D",
                "Great. On my side the database migration ran overnight, but two of the old "
                "tables still need to be copied by hand",
                listener="C",
            ),
            _line(
                "A",
                "Let's talk about the tables after the meeting. Anything blocking you?",
                entry="interrupt",
            ),
            _line("D", "No, nothing blocking. I just need a second pair of eyes later."),
            _line(
                "C",
                "I can help with that this afternoon. I am mostly reviewing code today, so my "
                "calendar is quite free after lunch.",
                listener="B",
            ),
            _line("A", "Perfect, then we are done. Thanks, everyone.", entry="overlap"),
            _line("B", "Thanks, see you tomorrow."),
        ),
    ),
    ConversationScript(
        stem="en_book_club",
        language="en",
        voice_a="en_rp_f3",
        voice_b="en_ny_m1",
        stereo=False,
        more_voices=("en_grandma",),
        lines=(
            _line("A", "So, what did you all think of the ending of the novel?"),
            _line(
                "B",
                "Honestly, I did not see it coming. I was sure the brother had taken the "
                "letters, right until the very last chapter.",
                listener="C",
            ),
            _line("C", "Same here! The clues were there the whole time though.", entry="overlap"),
            _line(
                "A",
                "That is what I loved about it, the author hides everything in plain sight",
            ),
            _line(
                "B",
                "But the lighthouse scene still felt rushed to me. It needed another chapter.",
                entry="interrupt",
                listener="A",
            ),
            _line("C", "Maybe, but a longer scene would have given the secret away."),
            _line(
                "A",
                "Good point. Shall we pick the next book now? I brought three suggestions "
                "from the library, all of them quite short.",
                listener="B",
            ),
            _line("B", "Let's take the shortest one, please.", entry="overlap"),
            _line("C", "Agreed. See you both next month."),
        ),
    ),
)
"""Mono 3-4 party meetings: several voices, overlapping hand-overs, an interruption and
back-channels from a named listener; their RTTM / turns.json references are exact, like the
conversations'. Built after CONVERSATIONS, so adding them left every conversation file as it
was (each recording draws from its own seed stream)."""


FAR_FIELD_CALLS: tuple[ConversationScript, ...] = (
    replace(
        next(c for c in CONVERSATIONS if c.stem == "en_missing_parcel"),
        stem="en_missing_parcel_far",
        voice_a="en_ny_m1",
        voice_b="en_rp_f3",
        far_field=True,
    ),
)
"""A two-party call recorded by one distant microphone: each voice through its own synthetic
room impulse response, mixed quiet (-40 to -25 dBFS) with pink noise 10-20 dB below, as
AliMeeting-style far-field audio is. The script is en_missing_parcel's, spoken by other voices.
Built after the meetings, so every earlier recording stays as it was."""
