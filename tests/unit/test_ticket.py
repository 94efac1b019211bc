"""Ticket: a batch's delivery reports settle it once, after it is sealed."""

from __future__ import annotations

import threading

from capture.publisher import Ticket


def test_fires_after_seal_and_last_settle():
    fired: list[Ticket] = []
    ticket = Ticket(on_done=fired.append)
    for _ in range(3):
        ticket.add()

    ticket.settle(True)
    ticket.settle(False)
    ticket.seal()
    assert fired == []
    assert ticket.outstanding == 1

    ticket.settle(True)
    assert fired == [ticket]
    assert ticket.done
    assert ticket.failed == 1


def test_fires_at_seal_when_all_settled():
    fired: list[Ticket] = []
    ticket = Ticket(on_done=fired.append)
    ticket.add()
    ticket.settle(True)
    assert fired == []

    ticket.seal()
    assert fired == [ticket]


def test_empty_ticket_fires_at_seal():
    fired: list[Ticket] = []
    Ticket(on_done=fired.append).seal()
    assert len(fired) == 1


def test_settles_from_another_thread_fire_once():
    """Adds in one thread and settles in another, as the publisher does, end in exactly one callback."""
    records = 20_000
    fired: list[Ticket] = []
    ticket = Ticket(on_done=fired.append)
    settled = threading.Semaphore(0)

    def settle_all() -> None:
        for _ in range(records):
            settled.acquire()
            ticket.settle(True)

    settler = threading.Thread(target=settle_all)
    settler.start()
    for _ in range(records):
        ticket.add()
        settled.release()
    ticket.seal()
    settler.join(timeout=30)

    assert fired == [ticket]
    assert ticket.outstanding == 0
