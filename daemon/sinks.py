"""Where results go: a session hands each partial and final to its list of sinks, in order.

A session's list is its own client first (through the codec of its protocol), then the daemon's:
the metrics, MQTT (`tympan/{site}/session/{id}/...`) and Hermes (`hermes/asr/textCaptured`). A
final reaches every sink, whether or not its client is still there.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Protocol

from tympan.daemon.codec import Codec
from tympan.daemon.events import Event, Final, Partial, Translation, TurnEvent, final_dict, turn_dict
from tympan.daemon.metrics import Counter, Histogram
from tympan.daemon.mqtt import Publisher
from tympan.daemon.outbox import Outbox

HERMES_TEXT_CAPTURED = "hermes/asr/textCaptured"


class Sink(Protocol):
    def partial(self, session_id: str, partial: Partial) -> None: ...

    def translation(self, session_id: str, translation: Translation) -> None: ...

    def final(self, session_id: str, final: Final) -> None: ...

    def turn(self, session_id: str, event: TurnEvent) -> None: ...


def droppable(event: Event, codec: Codec) -> bool:
    """Whether a slow client may lose this event's frames: partials, and translations sent whole each time."""
    return isinstance(event, Partial) or (isinstance(event, Translation) and not codec.translation_deltas)


class ClientSink:
    """The session's client: every event in its protocol's frames (partials may be dropped for a slow reader)."""

    def __init__(self, codec: Codec, outbox: Outbox) -> None:
        self.codec, self.outbox = codec, outbox

    def tell(self, event: Event) -> None:
        self.outbox.put(self.codec.render(event), droppable=droppable(event, self.codec))

    def partial(self, session_id: str, partial: Partial) -> None:
        self.tell(partial)

    def translation(self, session_id: str, translation: Translation) -> None:
        self.tell(translation)

    def final(self, session_id: str, final: Final) -> None:
        self.tell(final)

    def turn(self, session_id: str, event: TurnEvent) -> None:
        self.tell(event)


class FinalsMetrics:
    """tympan_finals_total and tympan_final_latency_seconds."""

    def __init__(self, finals: Counter, latency: Histogram) -> None:
        self.finals, self.latency = finals, latency

    def partial(self, session_id: str, partial: Partial) -> None:
        pass

    def translation(self, session_id: str, translation: Translation) -> None:
        pass

    def final(self, session_id: str, final: Final) -> None:
        self.finals.inc()
        if final.latency_ms is not None:
            self.latency.observe(final.latency_ms / 1000)

    def turn(self, session_id: str, event: TurnEvent) -> None:
        pass


class MqttSink:
    """tympan's own topics: finals durably, partials best effort (with mqtt.partials); see mqtt.py."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def partial(self, session_id: str, partial: Partial) -> None:
        self.publisher.publish_partial(session_id, {"type": "partial", **asdict(partial)})

    def translation(self, session_id: str, translation: Translation) -> None:
        # Best effort like partials, on the same topic: the final carries the whole answer and its source.
        self.publisher.publish_partial(session_id, {"type": "translation", **asdict(translation)})

    def final(self, session_id: str, final: Final) -> None:
        self.publisher.publish_final(session_id, {"type": "final", **final_dict(final)})

    def turn(self, session_id: str, event: TurnEvent) -> None:
        self.publisher.publish_turn(session_id, turn_dict(event))


def hermes_text_captured(final: Final, site: str, session_id: str) -> bytes:
    """A final as Hermes' textCaptured payload (camelCase, as Rhasspy's ASR services publish it).

    tympan's model gives no confidence: `likelihood` is always 1.0. `seconds` is the utterance's
    length; `lang` is the language of the text (the target language of a translation).
    """
    body = {"text": final.text, "likelihood": 1.0, "seconds": round(final.end - final.start, 3),
            "siteId": site, "sessionId": session_id, "lang": final.target_lang}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class HermesSink:
    """Rhasspy's Hermes protocol (mqtt.hermes): each final as `hermes/asr/textCaptured`, spooled as finals are."""

    def __init__(self, publisher: Publisher, site: str) -> None:
        self.publisher, self.site = publisher, site

    def partial(self, session_id: str, partial: Partial) -> None:
        pass

    def translation(self, session_id: str, translation: Translation) -> None:
        pass

    def final(self, session_id: str, final: Final) -> None:
        self.publisher.publish_durably(HERMES_TEXT_CAPTURED, hermes_text_captured(final, self.site, session_id))

    def turn(self, session_id: str, event: TurnEvent) -> None:
        pass
