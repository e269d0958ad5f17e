"""Queues: durable/exclusive/auto-delete/server-named, passive declare, purge, delete with
if-unused/if-empty, the x-arguments (TTL, expiration, expires, length limits and overflow,
dead-lettering with x-death, priority, single active consumer, queue types) and the exact
PRECONDITION_FAILED / NOT_FOUND / RESOURCE_LOCKED texts RabbitMQ sends."""

import datetime
import time

import pika
import pytest

from amqp_target import channel_close, get_bodies, message_count, queue_exists, unique, wait_until

pytestmark = pytest.mark.timeout(30, method="signal")


@pytest.fixture
def cch(ch):
    """A channel in confirm mode: when basic_publish returns, the message is enqueued."""
    ch.confirm_delivery()
    return ch


def declare(ch, cleanup, prefix, **kw):
    q = cleanup.queue(unique(prefix))
    ch.queue_declare(q, **kw)
    return q


# --- declare, passive, purge, delete ---------------------------------------------------------


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-") and len(ok.queue) > len("amq.gen-")
    assert (ok.message_count, ok.consumer_count) == (0, 0)
    assert ch.queue_declare("", exclusive=True).method.queue != ok.queue


def test_passive_declare_reports_counts(cch, cleanup):
    q = declare(cch, cleanup, "passive")
    for i in range(3):
        cch.basic_publish("", q, b"%d" % i)
    cch.basic_consume(q, lambda *a: None, auto_ack=False)
    ok = cch.queue_declare(q, passive=True).method
    assert ok.queue == q and ok.consumer_count == 1
    # The consumer may already hold deliveries; ready + unacked is what was published.
    assert ok.message_count <= 3


def test_passive_declare_of_missing_queue(conn):
    q = unique("missing")
    assert channel_close(lambda: conn.channel().queue_declare(q, passive=True)) == (
        404, f"NOT_FOUND - no queue '{q}' in vhost '/'")


def test_reserved_amq_prefix(conn):
    q = "amq." + unique("mine")
    assert channel_close(lambda: conn.channel().queue_declare(q)) == (
        403, f"ACCESS_REFUSED - queue name '{q}' contains reserved prefix 'amq.*'")


def test_purge_returns_count(cch, cleanup):
    q = declare(cch, cleanup, "purge")
    for i in range(7):
        cch.basic_publish("", q, b"x")
    assert cch.queue_purge(q).method.message_count == 7
    assert message_count(cch, q) == 0
    assert cch.queue_purge(q).method.message_count == 0


def test_purge_missing_queue(conn):
    q = unique("purge-missing")
    assert channel_close(lambda: conn.channel().queue_purge(q)) == (404, f"NOT_FOUND - no queue '{q}' in vhost '/'")


def test_delete_returns_count_and_missing_is_ok(cch, cleanup):
    q = declare(cch, cleanup, "del")
    for _ in range(4):
        cch.basic_publish("", q, b"x")
    assert cch.queue_delete(q).method.message_count == 4
    assert cch.queue_delete(q).method.message_count == 0  # already gone: not an error


def test_delete_if_unused_and_if_empty(conn, cleanup):
    ch = conn.channel()
    ch.confirm_delivery()
    q = declare(ch, cleanup, "del-cond")
    tag = ch.basic_consume(q, lambda *a: None)
    assert channel_close(lambda: ch.queue_delete(q, if_unused=True)) == (
        406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    assert channel_close(lambda: ch.queue_delete(q, if_empty=True)) == (
        406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
    ch = conn.channel()
    assert ch.queue_purge(q).method.message_count == 1
    ch.queue_delete(q, if_empty=True)
    assert channel_close(lambda: ch.queue_declare(q, passive=True))[0] == 404
    del tag


def test_exclusive_queue_is_locked_to_its_connection_and_goes_with_it(amqp, conn, cleanup):
    q = declare(conn.channel(), cleanup, "excl", exclusive=True)
    other = amqp.connect()
    try:
        locked = (405, f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. "
                       "It could be originally declared on another connection or the exclusive property value "
                       "does not match that of the original declaration.")
        assert channel_close(lambda: other.channel().queue_declare(q, passive=True)) == locked
        assert channel_close(lambda: other.channel().queue_declare(q, exclusive=True)) == locked
        assert channel_close(lambda: other.channel().basic_consume(q, lambda *a: None)) == locked
        assert channel_close(lambda: other.channel().basic_get(q)) == locked
        assert channel_close(lambda: other.channel().queue_delete(q)) == locked
        assert channel_close(lambda: other.channel().queue_purge(q)) == locked
        conn.close()
        probe = other.channel()
        wait_until(lambda: channel_close(lambda: other.channel().queue_declare(q, passive=True))[0] == 404,
                   what="the exclusive queue to go with its connection")
        del probe
    finally:
        other.close()


def test_exclusive_redeclare_as_non_exclusive_on_same_connection(conn, cleanup):
    q = declare(conn.channel(), cleanup, "excl-same", exclusive=True)
    code, text = channel_close(lambda: conn.channel().queue_declare(q, exclusive=False))
    assert (code, text) == (
        405, f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. "
             "It could be originally declared on another connection or the exclusive property value "
             "does not match that of the original declaration.")


def test_auto_delete_queue_goes_with_its_last_consumer(conn, cleanup):
    ch = conn.channel()
    q = declare(ch, cleanup, "autodel", auto_delete=True)
    # Never consumed from: it stays.
    time.sleep(0.2)
    ch.queue_declare(q, passive=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    ch.queue_declare(q, passive=True)
    ch.basic_cancel(t2)
    wait_until(lambda: channel_close(lambda: conn.channel().queue_declare(q, passive=True))[0] == 404,
               what="the auto-delete queue to be deleted")


def test_durable_queue_is_reported_durable_on_redeclare(ch, cleanup):
    q = declare(ch, cleanup, "durable", durable=True)
    ch.queue_declare(q, durable=True)
    ch.queue_declare(q, passive=True)


# --- redeclare with different properties or arguments: exact texts ----------------------------

PF = "PRECONDITION_FAILED - inequivalent arg"


@pytest.mark.parametrize(
    "first,second,expected",
    [
        (dict(durable=False), dict(durable=True), "{pf} 'durable' for queue '{q}' in vhost '/': received 'true' but current is 'false'"),
        (dict(durable=True), dict(durable=False), "{pf} 'durable' for queue '{q}' in vhost '/': received 'false' but current is 'true'"),
        (dict(auto_delete=False), dict(auto_delete=True), "{pf} 'auto_delete' for queue '{q}' in vhost '/': received 'true' but current is 'false'"),
        (dict(), dict(arguments={"x-message-ttl": 2000}),
         "{pf} 'x-message-ttl' for queue '{q}' in vhost '/': received the value '2000' of type 'signedint' but current is none"),
        (dict(arguments={"x-message-ttl": 1000}), dict(arguments={"x-message-ttl": 2000}),
         "{pf} 'x-message-ttl' for queue '{q}' in vhost '/': received '2000' but current is '1000'"),
        (dict(arguments={"x-message-ttl": 1000}), dict(),
         "{pf} 'x-message-ttl' for queue '{q}' in vhost '/': received none but current is the value '1000' of type 'signedint'"),
        (dict(arguments={"x-max-length": 10}), dict(arguments={"x-max-length": 11}),
         "{pf} 'x-max-length' for queue '{q}' in vhost '/': received '11' but current is '10'"),
        (dict(arguments={"x-dead-letter-exchange": "a"}), dict(arguments={"x-dead-letter-exchange": "b"}),
         "{pf} 'x-dead-letter-exchange' for queue '{q}' in vhost '/': received 'b' but current is 'a'"),
        (dict(durable=True, arguments={"x-queue-type": "classic"}), dict(durable=True, arguments={"x-queue-type": "quorum"}),
         "{pf} 'x-queue-type' for queue '{q}' in vhost '/': received 'quorum' but current is 'classic'"),
        (dict(durable=True, arguments={"x-queue-type": "quorum"}), dict(durable=True),
         "{pf} 'x-queue-type' for queue '{q}' in vhost '/': received none but current is the value 'quorum' of type 'longstr'"),
        (dict(arguments={"x-max-priority": 5}), dict(arguments={"x-max-priority": 6}),
         "{pf} 'x-max-priority' for queue '{q}' in vhost '/': received '6' but current is '5'"),
    ],
    ids=["durable-f-t", "durable-t-f", "auto_delete", "ttl-none", "ttl-diff", "ttl-removed", "max-length",
         "dlx", "type-classic-quorum", "type-quorum-none", "priority"],
)
def test_redeclare_with_different_properties(conn, cleanup, first, second, expected):
    q = declare(conn.channel(), cleanup, "redecl", **first)
    code, text = channel_close(lambda: conn.channel().queue_declare(q, **second))
    assert (code, text) == (406, expected.format(pf=PF, q=q))


def test_redeclare_equivalent_is_ok(ch, cleanup):
    args = {"x-message-ttl": 1000, "x-max-length": 5, "x-dead-letter-exchange": "dlx"}
    q = declare(ch, cleanup, "equiv", durable=True, arguments=args)
    ch.queue_declare(q, durable=True, arguments=dict(args))
    # Absent x-queue-type and x-queue-type classic are equivalent for a classic queue.
    ch.queue_declare(q, durable=True, arguments={**args, "x-queue-type": "classic"})


@pytest.mark.parametrize(
    "args,expected",
    [
        ({"x-max-length": "ten"}, "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{q}' in vhost '/': \"expected integer, got longstr\""),
        ({"x-max-length": -1}, "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}"),
        ({"x-message-ttl": -5}, "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-5}}"),
        ({"x-expires": 0}, "PRECONDITION_FAILED - invalid arg 'x-expires' for queue '{q}' in vhost '/': {{value_zero,0}}"),
        ({"x-overflow": "drop-tail"}, "PRECONDITION_FAILED - invalid arg 'x-overflow' for queue '{q}' in vhost '/': invalid_overflow"),
        ({"x-queue-type": "lazy"}, "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': \"unsupported queue type 'lazy'\""),
        ({"x-max-priority": 256}, "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{max_value_exceeded,256}}"),
    ],
    ids=["max-length-type", "max-length-negative", "ttl-negative", "expires-zero", "overflow-value", "queue-type", "priority-too-large"],
)
def test_invalid_arguments(conn, cleanup, args, expected):
    q = cleanup.queue(unique("badarg"))
    code, text = channel_close(lambda: conn.channel().queue_declare(q, arguments=args))
    assert (code, text) == (406, expected.format(q=q))


# --- TTL and expiry -------------------------------------------------------------------------


def test_x_message_ttl(cch, cleanup):
    q = declare(cch, cleanup, "ttl", arguments={"x-message-ttl": 1000})
    cch.basic_publish("", q, b"old")
    time.sleep(1.5)
    cch.basic_publish("", q, b"new")
    assert get_bodies(cch, q) == [b"new"]


def test_per_message_expiration(cch, cleanup):
    q = declare(cch, cleanup, "expiration")
    cch.basic_publish("", q, b"short", pika.BasicProperties(expiration="200"))
    cch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    cch.basic_publish("", q, b"forever")
    time.sleep(0.5)
    # Expired messages are dropped at the head of the queue (here: the first one).
    assert get_bodies(cch, q) == [b"long", b"forever"]


def test_expiration_keeps_property_on_delivery(cch, cleanup):
    q = declare(cch, cleanup, "expiration-prop")
    cch.basic_publish("", q, b"m", pika.BasicProperties(expiration="60000"))
    _m, props, _b = cch.basic_get(q, auto_ack=True)
    assert props.expiration == "60000"


def test_invalid_expiration_closes_channel(conn, cleanup):
    ch = conn.channel()
    q = declare(ch, cleanup, "bad-expiration")
    ch.basic_publish("", q, b"m", pika.BasicProperties(expiration="soon"))
    code, text = channel_close(lambda: ch.queue_declare(q, passive=True))
    assert (code, text) == (406, "PRECONDITION_FAILED - invalid expiration 'soon': no_integer")


def test_x_expires_deletes_unused_queue(conn, cleanup):
    q = declare(conn.channel(), cleanup, "expires", arguments={"x-expires": 400})
    # A declare (even passive) renews the lease, so look only after the queue had time to expire.
    time.sleep(1.5)
    assert not queue_exists(conn, q)


def test_x_expires_waits_while_consumed(conn, cleanup):
    ch = conn.channel()
    q = declare(ch, cleanup, "expires-used", arguments={"x-expires": 300})
    tag = ch.basic_consume(q, lambda *a: None)
    time.sleep(0.8)
    assert queue_exists(conn, q)
    ch.basic_cancel(tag)
    time.sleep(1.5)
    assert not queue_exists(conn, q)


def test_x_message_ttl_zero_drops_unless_consumer_waits(conn, cleanup):
    ch = conn.channel()
    ch.confirm_delivery()
    q = declare(ch, cleanup, "ttl0", arguments={"x-message-ttl": 0})
    ch.basic_publish("", q, b"dropped")
    assert get_bodies(ch, q) == []
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"delivered")
    wait_until(lambda: conn.process_data_events(0.05) or got, what="delivery to the waiting consumer")
    assert got == [b"delivered"]


# --- length limits --------------------------------------------------------------------------


@pytest.mark.parametrize("overflow", [None, "drop-head"])
def test_x_max_length_drops_head(cch, cleanup, overflow):
    args = {"x-max-length": 3} if overflow is None else {"x-max-length": 3, "x-overflow": overflow}
    q = declare(cch, cleanup, "maxlen", arguments=args)
    for i in range(5):
        cch.basic_publish("", q, b"%d" % i)
    assert get_bodies(cch, q) == [b"2", b"3", b"4"]


def test_x_max_length_bytes(cch, cleanup):
    q = declare(cch, cleanup, "maxbytes", arguments={"x-max-length-bytes": 10})
    for i in range(5):
        cch.basic_publish("", q, b"abc%d" % i)  # 4 bytes each: two fit
    assert get_bodies(cch, q) == [b"abc3", b"abc4"]


def test_x_overflow_reject_publish_nacks_under_confirms(cch, cleanup):
    q = declare(cch, cleanup, "reject-pub", arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    cch.basic_publish("", q, b"1")
    cch.basic_publish("", q, b"2")
    with pytest.raises(pika.exceptions.NackError):
        cch.basic_publish("", q, b"3")
    assert get_bodies(cch, q) == [b"1", b"2"]
    cch.basic_publish("", q, b"4")  # room again
    assert get_bodies(cch, q) == [b"4"]


def test_x_overflow_reject_publish_without_confirms_drops_silently(ch, cleanup):
    q = declare(ch, cleanup, "reject-pub-nc", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    wait_until(lambda: message_count(ch, q) == 1, what="one message in the queue")
    time.sleep(0.2)
    assert get_bodies(ch, q) == [b"0"]


def test_x_overflow_reject_publish_dlx(cch, cleanup):
    dlx = cleanup.exchange(unique("rpdlx-x"))
    cch.exchange_declare(dlx, "fanout")
    dead = declare(cch, cleanup, "rpdlx-dead")
    cch.queue_bind(dead, dlx)
    q = declare(cch, cleanup, "rpdlx", arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                                  "x-dead-letter-exchange": dlx})
    cch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        cch.basic_publish("", q, b"rejected")
    assert get_bodies(cch, q) == [b"kept"]
    _m, props, body = wait_until(lambda: (lambda r: r if r[0] else None)(cch.basic_get(dead, auto_ack=True)),
                                 what="the rejected message in the dead-letter queue")
    assert body == b"rejected"
    death = props.headers["x-death"][0]
    assert death["reason"] == "maxlen" and death["queue"] == q and death["count"] == 1


def test_drop_head_dead_letters_with_reason_maxlen(cch, cleanup):
    dlx = cleanup.exchange(unique("dhdlx-x"))
    cch.exchange_declare(dlx, "fanout")
    dead = declare(cch, cleanup, "dhdlx-dead")
    cch.queue_bind(dead, dlx)
    q = declare(cch, cleanup, "dhdlx", arguments={"x-max-length": 1, "x-dead-letter-exchange": dlx})
    cch.basic_publish("", q, b"first")
    cch.basic_publish("", q, b"second")
    _m, props, body = wait_until(lambda: (lambda r: r if r[0] else None)(cch.basic_get(dead, auto_ack=True)),
                                 what="the dropped head in the dead-letter queue")
    assert body == b"first"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert get_bodies(cch, q) == [b"second"]


# --- dead-lettering ---------------------------------------------------------------------------


def dead_lettered(ch, queue, timeout_s=10.0):
    return wait_until(lambda: (lambda r: r if r[0] else None)(ch.basic_get(queue, auto_ack=True)),
                      timeout_s=timeout_s, what=f"a dead-lettered message in {queue}")


def test_dead_letter_on_reject_with_full_x_death(cch, cleanup):
    dlx = cleanup.exchange(unique("dlx"))
    cch.exchange_declare(dlx, "direct")
    dead = declare(cch, cleanup, "dead")
    cch.queue_bind(dead, dlx, "dead-key")
    src_x = cleanup.exchange(unique("src-x"))
    cch.exchange_declare(src_x, "direct")
    q = declare(cch, cleanup, "dl-src", arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead-key"})
    cch.queue_bind(q, src_x, "orig-key")
    before = time.time()
    cch.basic_publish(src_x, "orig-key", b"payload", pika.BasicProperties(headers={"app": "h"}, message_id="mid-1"))
    method, _p, _b = cch.basic_get(q)
    cch.basic_reject(method.delivery_tag, requeue=False)
    m, props, body = dead_lettered(cch, dead)
    assert body == b"payload"
    assert m.exchange == dlx and m.routing_key == "dead-key"
    assert props.message_id == "mid-1" and props.headers["app"] == "h"
    deaths = props.headers["x-death"]
    assert len(deaths) == 1
    death = deaths[0]
    assert set(death) == {"count", "reason", "queue", "exchange", "routing-keys", "time"}, death
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == q
    assert death["exchange"] == src_x
    assert death["routing-keys"] == ["orig-key"]
    assert isinstance(death["time"], datetime.datetime)
    # AMQP timestamps have whole seconds.
    assert before - 5 <= death["time"].replace(tzinfo=datetime.timezone.utc).timestamp() <= before + 30
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == q
    assert props.headers["x-first-death-exchange"] == src_x


def test_dead_letter_on_nack_and_on_expiry_keeps_routing_key_without_override(cch, cleanup):
    dlx = cleanup.exchange(unique("dlx2"))
    cch.exchange_declare(dlx, "topic")
    dead = declare(cch, cleanup, "dead2")
    cch.queue_bind(dead, dlx, "#")
    q = declare(cch, cleanup, "dl-src2", arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 200})
    cch.basic_publish("", q, b"nacked")
    method, _p, _b = cch.basic_get(q)
    cch.basic_nack(method.delivery_tag, requeue=False)
    m, props, body = dead_lettered(cch, dead)
    assert body == b"nacked" and m.routing_key == q
    assert props.headers["x-death"][0]["reason"] == "rejected"
    cch.basic_publish("", q, b"expired", pika.BasicProperties(expiration="100"))
    m, props, body = dead_lettered(cch, dead)
    assert body == b"expired" and m.routing_key == q
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired" and death["queue"] == q and death["exchange"] == "" and death["routing-keys"] == [q]
    # The per-message expiration is kept in x-death and removed from the properties.
    assert death["original-expiration"] == "100"
    assert props.expiration is None


def test_retry_cycle_counts_in_x_death(cch, cleanup):
    """The delay/retry pattern: work queue -> DLX -> delay queue with TTL -> back to work."""
    work = cleanup.queue(unique("work"))
    delay = cleanup.queue(unique("delay"))
    cch.queue_declare(work, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": delay})
    cch.queue_declare(delay, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": work,
                                        "x-message-ttl": 100})
    cch.basic_publish("", work, b"job")
    for attempt in (1, 2):
        method, props, _b = wait_until(lambda: (lambda r: r if r[0] else None)(cch.basic_get(work)),
                                       what=f"attempt {attempt}")
        if attempt == 2:
            deaths = {(d["queue"], d["reason"]): d["count"] for d in props.headers["x-death"]}
            assert deaths == {(work, "rejected"): 1, (delay, "expired"): 1}
            # The most recent death comes first.
            assert props.headers["x-death"][0]["queue"] == delay
            assert props.headers["x-first-death-queue"] == work
        cch.basic_reject(method.delivery_tag, requeue=False)
    method, props, _b = wait_until(lambda: (lambda r: r if r[0] else None)(cch.basic_get(work, auto_ack=True)),
                                   what="attempt 3")
    deaths = {(d["queue"], d["reason"]): d["count"] for d in props.headers["x-death"]}
    assert deaths == {(work, "rejected"): 2, (delay, "expired"): 2}


def test_dead_letter_to_missing_exchange_drops(cch, cleanup):
    q = declare(cch, cleanup, "dl-missing", arguments={"x-dead-letter-exchange": unique("nope")})
    cch.basic_publish("", q, b"m")
    method, _p, _b = cch.basic_get(q)
    cch.basic_reject(method.delivery_tag, requeue=False)
    time.sleep(0.2)
    assert message_count(cch, q) == 0


# --- priority, single active consumer, queue types ----------------------------------------------


def test_x_max_priority_orders_deliveries(cch, cleanup):
    q = declare(cch, cleanup, "prio", arguments={"x-max-priority": 10})
    for body, prio in [(b"p1", 1), (b"p5a", 5), (b"none", None), (b"p3", 3), (b"p5b", 5), (b"p20", 20)]:
        cch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    # Priorities above the maximum count as the maximum; no priority counts as 0; FIFO within one.
    assert get_bodies(cch, q) == [b"p20", b"p5a", b"p5b", b"p3", b"p1", b"none"]


def test_priority_ignored_without_x_max_priority(cch, cleanup):
    q = declare(cch, cleanup, "noprio")
    for body, prio in [(b"a", 1), (b"b", 9), (b"c", 5)]:
        cch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    assert get_bodies(cch, q) == [b"a", b"b", b"c"]


def test_single_active_consumer(amqp, cleanup):
    c1, c2 = amqp.connect(), amqp.connect()
    try:
        ch1, ch2 = c1.channel(), c2.channel()
        q = declare(ch1, cleanup, "sac", arguments={"x-single-active-consumer": True})
        got1, got2 = [], []
        t1 = ch1.basic_consume(q, lambda c, m, p, b: (got1.append(b), c.basic_ack(m.delivery_tag)))
        ch2.basic_consume(q, lambda c, m, p, b: (got2.append(b), c.basic_ack(m.delivery_tag)))
        pub = c1.channel()
        pub.confirm_delivery()
        for i in range(5):
            pub.basic_publish("", q, b"%d" % i)
        deadline = time.monotonic() + 5
        while len(got1) < 5 and time.monotonic() < deadline:
            c1.process_data_events(0.05)
            c2.process_data_events(0.01)
        assert got1 == [b"%d" % i for i in range(5)] and got2 == []
        ch1.basic_cancel(t1)
        for i in range(5, 8):
            pub.basic_publish("", q, b"%d" % i)
        deadline = time.monotonic() + 5
        while len(got2) < 3 and time.monotonic() < deadline:
            c2.process_data_events(0.05)
        assert got2 == [b"5", b"6", b"7"]
    finally:
        c1.close()
        c2.close()


def test_quorum_queue(cch, cleanup):
    q = declare(cch, cleanup, "quorum", durable=True, arguments={"x-queue-type": "quorum"})
    cch.basic_publish("", q, b"q1")
    method, props, body = cch.basic_get(q)
    assert body == b"q1" and not method.redelivered
    cch.basic_nack(method.delivery_tag, requeue=True)
    method, props, body = cch.basic_get(q)
    assert body == b"q1" and method.redelivered
    # Quorum queues count deliveries of returned messages.
    assert props.headers["x-delivery-count"] == 1
    cch.basic_ack(method.delivery_tag)
    assert message_count(cch, q) == 0


@pytest.mark.parametrize(
    "kw,expected",
    [
        (dict(durable=False), (406, "PRECONDITION_FAILED - invalid property 'non-durable' for queue '{q}' in vhost '/'")),
        (dict(durable=True, exclusive=True), (406, "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue '{q}' in vhost '/'")),
        (dict(durable=True, auto_delete=True), (406, "PRECONDITION_FAILED - invalid property 'auto-delete' for queue '{q}' in vhost '/'")),
        (dict(durable=True, arguments={"x-max-priority": 5}),
         (406, "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue")),
    ],
    ids=["non-durable", "exclusive", "auto-delete", "priority"],
)
def test_quorum_queue_property_rules(conn, cleanup, kw, expected):
    q = cleanup.queue(unique("quorum-bad"))
    kw = dict(kw)
    kw["arguments"] = {"x-queue-type": "quorum", **kw.get("arguments", {})}
    code, text = channel_close(lambda: conn.channel().queue_declare(q, **kw))
    assert (code, text) == (expected[0], expected[1].format(q=q))


def test_classic_queue_type_explicit(cch, cleanup):
    q = declare(cch, cleanup, "classic", arguments={"x-queue-type": "classic"})
    cch.basic_publish("", q, b"c")
    assert get_bodies(cch, q) == [b"c"]

