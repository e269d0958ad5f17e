"""Exchanges: the default and amq.* exchanges, each type with its routing rules (topic `*`/`#`,
headers x-match all/any), durable/auto-delete, internal, alternate-exchange, exchange-to-exchange
bindings, passive declare and delete, with RabbitMQ's reply codes and texts."""

import pika
import pytest

from amqp_target import channel_close, connection_close, get_bodies, unique

pytestmark = pytest.mark.timeout(30, method="signal")


def bound_queues(ch, cleanup, exchange, keys_or_args):
    """One fresh queue per binding spec, bound to `exchange`; returns the queue names."""
    names = []
    for spec in keys_or_args:
        q = cleanup.queue(unique("xq"))
        ch.queue_declare(q)
        if isinstance(spec, dict):
            ch.queue_bind(q, exchange, routing_key="", arguments=spec)
        else:
            ch.queue_bind(q, exchange, routing_key=spec)
        names.append(q)
    return names


def routed_to(ch, queues, exchange, routing_key, headers=None):
    """Publish one confirmed message; the indexes of the queues it reached."""
    ch.basic_publish(exchange, routing_key, b"m", pika.BasicProperties(headers=headers))
    return [i for i, q in enumerate(queues) if get_bodies(ch, q) == [b"m"]]


@pytest.fixture
def cch(ch):
    """A channel in confirm mode, so a publish has been routed when basic_publish returns."""
    ch.confirm_delivery()
    return ch


def test_default_exchange_routes_by_queue_name(cch, cleanup):
    q = cleanup.queue(unique("dflt"))
    cch.queue_declare(q)
    cch.basic_publish("", q, b"hello")
    assert get_bodies(cch, q) == [b"hello"]


@pytest.mark.parametrize("op", ["declare", "delete", "bind"])
def test_default_exchange_is_not_configurable(conn, cleanup, op):
    ch = conn.channel()
    q = cleanup.queue(unique("dflt-op"))
    ch.queue_declare(q)
    fn = {
        "declare": lambda: ch.exchange_declare("", "direct"),
        "delete": lambda: ch.exchange_delete(""),
        "bind": lambda: ch.queue_bind(q, "", routing_key=q),
    }[op]
    assert channel_close(fn) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_amq_direct(cch, cleanup):
    qs = bound_queues(cch, cleanup, "amq.direct", ["a", "b", "a"])
    assert routed_to(cch, qs, "amq.direct", "a") == [0, 2]
    assert routed_to(cch, qs, "amq.direct", "b") == [1]
    assert routed_to(cch, qs, "amq.direct", "c") == []


def test_amq_fanout(cch, cleanup):
    qs = bound_queues(cch, cleanup, "amq.fanout", ["x", "", "whatever"])
    assert routed_to(cch, qs, "amq.fanout", "ignored") == [0, 1, 2]


TOPIC_CASES = [
    # (binding pattern, routing key, matches)
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.b.c", False),
    ("a.#", "a", True),
    ("a.#", "a.b.c.d", True),
    ("#", "", True),
    ("#", "anything.at.all", True),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.x.y.c", True),
    ("a.#.c", "a.x.y.d", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*", "", False),
    ("*.*", "a.b", True),
    ("#.#", "a.b", True),
    ("*.#", "a", True),
    ("a.*", "a.", True),
    ("", "", True),
    ("", "a", False),
]


def test_amq_topic_wildcards(cch, cleanup):
    patterns = [p for p, _, _ in TOPIC_CASES]
    qs = bound_queues(cch, cleanup, "amq.topic", patterns)
    for i, (pattern, key, matches) in enumerate(TOPIC_CASES):
        hits = routed_to(cch, qs, "amq.topic", key)
        assert (i in hits) == matches, f"pattern {pattern!r} vs key {key!r}: expected match={matches}"


def test_amq_headers_all_and_any(cch, cleanup):
    qs = bound_queues(cch, cleanup, "amq.headers", [
        {"x-match": "all", "a": 1, "b": "two"},
        {"x-match": "any", "a": 1, "b": "two"},
        {"a": 1},  # x-match defaults to all
        {"x-match": "all"},  # no headers: matches everything
        {"x-match": "any", "x-private": "p"},  # x- prefixed binding args are not matched on
    ])
    assert routed_to(cch, qs, "amq.headers", "", {"a": 1, "b": "two"}) == [0, 1, 2, 3]
    assert routed_to(cch, qs, "amq.headers", "", {"a": 1}) == [1, 2, 3]
    assert routed_to(cch, qs, "amq.headers", "", {"b": "two"}) == [1, 3]
    assert routed_to(cch, qs, "amq.headers", "", {"a": 2, "b": "three"}) == [3]
    assert routed_to(cch, qs, "amq.headers", "", None) == [3]
    assert routed_to(cch, qs, "amq.headers", "", {"x-private": "p"}) == [3]


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_user_declared_exchange_of_each_type(cch, cleanup, kind):
    x = cleanup.exchange(unique(f"ux-{kind}"))
    cch.exchange_declare(x, kind, durable=False)
    spec = {"direct": "k", "fanout": "", "topic": "k.*", "headers": {"h": "v"}}[kind]
    qs = bound_queues(cch, cleanup, x, [spec])
    key = {"direct": "k", "fanout": "zzz", "topic": "k.z", "headers": ""}[kind]
    assert routed_to(cch, qs, x, key, {"h": "v"}) == [0]
    miss_key = {"direct": "j", "fanout": None, "topic": "j.z", "headers": ""}[kind]
    if miss_key is not None:
        assert routed_to(cch, qs, x, miss_key, {"h": "w"}) == []


def test_redeclare_same_is_ok_and_passive(ch, cleanup):
    x = cleanup.exchange(unique("redecl"))
    ch.exchange_declare(x, "topic", durable=True)
    ch.exchange_declare(x, "topic", durable=True)
    ch.exchange_declare(x, passive=True)


def test_redeclare_with_other_type(conn, cleanup):
    ch = conn.channel()
    x = cleanup.exchange(unique("redecl-type"))
    ch.exchange_declare(x, "direct")
    code, text = channel_close(lambda: ch.exchange_declare(x, "fanout"))
    assert (code, text) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'fanout' but current is 'direct'")


def test_redeclare_with_other_durability(conn, cleanup):
    ch = conn.channel()
    x = cleanup.exchange(unique("redecl-dur"))
    ch.exchange_declare(x, "direct", durable=False)
    code, text = channel_close(lambda: conn.channel().exchange_declare(x, "direct", durable=True))
    assert (code, text) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{x}' in vhost '/': received 'true' but current is 'false'")


def test_passive_declare_of_missing_exchange(conn):
    x = unique("missing-x")
    code, text = channel_close(lambda: conn.channel().exchange_declare(x, passive=True))
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{x}' in vhost '/'")


def test_publish_to_missing_exchange(conn):
    x = unique("missing-pub")
    ch = conn.channel()
    ch.basic_publish(x, "k", b"m")
    code, text = channel_close(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{x}' in vhost '/'")


def test_reserved_amq_prefix(conn):
    x = "amq." + unique("mine")
    code, text = channel_close(lambda: conn.channel().exchange_declare(x, "direct"))
    assert (code, text) == (403, f"ACCESS_REFUSED - exchange name '{x}' contains reserved prefix 'amq.*'")


def test_unknown_exchange_type_closes_the_connection(amqp):
    """COMMAND_INVALID is a connection-level error: the whole connection goes."""
    conn = amqp.connect()
    x = unique("badtype")
    code, text = connection_close(lambda: conn.channel().exchange_declare(x, "no-such-type"))
    assert (code, text) == (503, "COMMAND_INVALID - unknown exchange type 'no-such-type'")
    assert conn.is_closed


def test_delete_exchange_and_if_unused(conn, cleanup):
    ch = conn.channel()
    x = cleanup.exchange(unique("del-x"))
    ch.exchange_declare(x, "fanout")
    q = cleanup.queue(unique("del-xq"))
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    code, text = channel_close(lambda: ch.exchange_delete(x, if_unused=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use")
    ch = conn.channel()
    ch.exchange_delete(x)
    code, text = channel_close(lambda: ch.exchange_declare(x, passive=True))
    assert code == 404
    # Deleting a missing exchange is not an error.
    conn.channel().exchange_delete(unique("never-existed"))


def test_auto_delete_exchange_goes_with_its_last_binding(conn, cleanup):
    ch = conn.channel()
    x = cleanup.exchange(unique("autodel-x"))
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q = cleanup.queue(unique("autodel-xq"))
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    ch.exchange_declare(x, passive=True)  # still there while bound
    ch.queue_unbind(q, x)
    code, _ = channel_close(lambda: ch.exchange_declare(x, passive=True))
    assert code == 404


def test_internal_exchange(conn, cleanup):
    ch = conn.channel()
    ch.confirm_delivery()
    internal = cleanup.exchange(unique("internal-x"))
    front = cleanup.exchange(unique("front-x"))
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_declare(front, "fanout")
    ch.exchange_bind(destination=internal, source=front)
    q = cleanup.queue(unique("internal-q"))
    ch.queue_declare(q)
    ch.queue_bind(q, internal)
    # Reachable through an exchange-to-exchange binding...
    ch.basic_publish(front, "", b"via-front")
    assert get_bodies(ch, q) == [b"via-front"]
    # ...but publishing to it directly closes the channel.
    code, text = channel_close(lambda: ch.basic_publish(internal, "", b"direct"))
    assert (code, text) == (403, f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'")


def test_alternate_exchange(cch, cleanup):
    ae = cleanup.exchange(unique("ae"))
    x = cleanup.exchange(unique("with-ae"))
    cch.exchange_declare(ae, "fanout")
    cch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    routed = cleanup.queue(unique("ae-routed"))
    fallback = cleanup.queue(unique("ae-fallback"))
    cch.queue_declare(routed)
    cch.queue_declare(fallback)
    cch.queue_bind(routed, x, "known")
    cch.queue_bind(fallback, ae)
    cch.basic_publish(x, "known", b"k")
    cch.basic_publish(x, "unknown", b"u", mandatory=True)  # routed via the AE: not returned
    assert get_bodies(cch, routed) == [b"k"]
    assert get_bodies(cch, fallback) == [b"u"]


def test_exchange_to_exchange_bindings_and_unbind(cch, cleanup):
    src = cleanup.exchange(unique("e2e-src"))
    mid = cleanup.exchange(unique("e2e-mid"))
    cch.exchange_declare(src, "topic")
    cch.exchange_declare(mid, "direct")
    cch.exchange_bind(destination=mid, source=src, routing_key="orders.*")
    q = cleanup.queue(unique("e2e-q"))
    cch.queue_declare(q)
    cch.queue_bind(q, mid, "orders.eu")
    cch.basic_publish(src, "orders.eu", b"eu")
    cch.basic_publish(src, "orders.us", b"us")  # passes src, dropped by mid
    cch.basic_publish(src, "other.eu", b"no")  # dropped by src
    assert get_bodies(cch, q) == [b"eu"]
    cch.exchange_unbind(destination=mid, source=src, routing_key="orders.*")
    cch.basic_publish(src, "orders.eu", b"after-unbind")
    assert get_bodies(cch, q) == []


def test_exchange_to_exchange_cycle_delivers_once(cch, cleanup):
    a = cleanup.exchange(unique("cycle-a"))
    b = cleanup.exchange(unique("cycle-b"))
    cch.exchange_declare(a, "fanout")
    cch.exchange_declare(b, "fanout")
    cch.exchange_bind(destination=b, source=a)
    cch.exchange_bind(destination=a, source=b)
    q = cleanup.queue(unique("cycle-q"))
    cch.queue_declare(q)
    cch.queue_bind(q, a)
    cch.queue_bind(q, b)
    cch.basic_publish(a, "", b"once")
    assert get_bodies(cch, q) == [b"once"]


def test_bind_to_missing_queue_and_exchange(conn, cleanup):
    x = cleanup.exchange(unique("bind-x"))
    conn.channel().exchange_declare(x, "direct")
    q = unique("missing-q")
    assert channel_close(lambda: conn.channel().queue_bind(q, x, "k")) == (404, f"NOT_FOUND - no queue '{q}' in vhost '/'")
    real = cleanup.queue(unique("bind-q"))
    conn.channel().queue_declare(real)
    mx = unique("missing-x")
    assert channel_close(lambda: conn.channel().queue_bind(real, mx, "k")) == (404, f"NOT_FOUND - no exchange '{mx}' in vhost '/'")


def test_unbind_missing_binding_is_ok(ch, cleanup):
    x = cleanup.exchange(unique("unbind-x"))
    ch.exchange_declare(x, "direct")
    q = cleanup.queue(unique("unbind-q"))
    ch.queue_declare(q)
    ch.queue_unbind(q, x, "never-bound")
