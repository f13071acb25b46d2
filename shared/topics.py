"""Every topic in one place: its name, what travels on it, and its dead-letter twin."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALL_TOPICS", "INVOICE_EVENTS", "Topic", "dlq_name"]


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    partitioned: bool = True  # False: one partition (dead-letter topics, low volume)

    def qualified(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    @property
    def dlq(self) -> Topic:
        return Topic(dlq_name(self.name), f"dead letters of {self.name}", partitioned=False)


def dlq_name(topic: str) -> str:
    return f"{topic}.dlq"


INVOICE_EVENTS = Topic("invoice.events.v1", "invoice facts from the issuer: issued, voided, red-lettered")

ALL_TOPICS: tuple[Topic, ...] = (INVOICE_EVENTS, INVOICE_EVENTS.dlq)
