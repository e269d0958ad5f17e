"""connection.blocked / connection.unblocked when a resource alarm (memory) is raised and cleared.

Needs a broker the suite controls: the alarm would stop every publisher of a shared broker.
"""

import time

import pytest

from amqp_target import set_memory_alarm, unique

pytestmark = [pytest.mark.timeout(120, method="signal"), pytest.mark.needs_restart]


def test_memory_alarm_blocks_and_unblocks_publishers(restartable):
    target = restartable
    conn = target.connect(blocked_connection_timeout=None)
    events = []
    conn.add_on_connection_blocked_callback(lambda _c, frame: events.append(("blocked", frame.method.reason)))
    conn.add_on_connection_unblocked_callback(lambda _c, _frame: events.append(("unblocked", None)))
    q = unique("alarm")
    try:
        ch = conn.channel()
        ch.queue_declare(q)
        set_memory_alarm(target, True)
        try:
            ch.basic_publish("", q, b"during-alarm")
            deadline = time.monotonic() + 20
            while not events and time.monotonic() < deadline:
                conn.process_data_events(0.1)
            assert events and events[0][0] == "blocked", events
            assert events[0][1] == "low on memory"
        finally:
            set_memory_alarm(target, False)
        deadline = time.monotonic() + 20
        while len(events) < 2 and time.monotonic() < deadline:
            conn.process_data_events(0.1)
        assert events[1] == ("unblocked", None), events
        # The message published while blocked was held back, not lost.
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:
            got = ch.basic_get(q, auto_ack=True)[2]
        assert got == b"during-alarm"
        ch.queue_delete(q)
    finally:
        if conn.is_open:
            conn.close()
