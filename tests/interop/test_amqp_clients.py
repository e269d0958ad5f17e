"""Other clients against the same broker: pika's asyncio adapter, aio-pika (aiormq), and
Debian's amqp-tools CLI (librabbitmq)."""

import asyncio
import shutil
import subprocess

import aio_pika
import aiormq
import pika
import pytest
from pika.adapters.asyncio_connection import AsyncioConnection

from amqp_target import get_bodies, unique

pytestmark = pytest.mark.timeout(30, method="signal")

# Bound for one asyncio scenario and for one CLI call.
ASYNC_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 20.0


def run_async(coro):
    return asyncio.run(asyncio.wait_for(coro, ASYNC_TIMEOUT_S))


# --- pika asyncio adapter ---------------------------------------------------------------------


def test_pika_asyncio_adapter_confirms_and_consumes(amqp, cleanup):
    q = cleanup.queue(unique("pika-async"))
    n = 20

    async def scenario():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        state = {"acks": [], "bodies": [], "tags": []}

        def fail(err):
            if not done.done():
                done.set_exception(RuntimeError(repr(err)))

        def on_open(conn):
            conn.channel(on_open_callback=on_channel)

        def on_channel(ch):
            state["ch"] = ch
            ch.add_on_close_callback(lambda _c, reason: fail(reason) if not done.done() else None)
            ch.queue_declare(q, durable=True, callback=lambda _f: ch.confirm_delivery(on_confirm, callback=on_select))

        def on_select(_frame):
            ch = state["ch"]
            for i in range(n):
                ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2))

        def on_confirm(frame):
            method = frame.method
            assert isinstance(method, pika.spec.Basic.Ack), method
            state["acks"].append((method.delivery_tag, method.multiple))
            acked = max(t for t, _ in state["acks"])
            if acked == n and "consuming" not in state:
                state["consuming"] = True
                ch = state["ch"]
                ch.basic_qos(prefetch_count=5, callback=lambda _f: ch.basic_consume(q, on_message))

        def on_message(ch, method, props, body):
            state["bodies"].append(body)
            state["tags"].append(method.delivery_tag)
            ch.basic_ack(method.delivery_tag)
            if len(state["bodies"]) == n and not done.done():
                done.set_result(None)

        conn = AsyncioConnection(amqp.params(), on_open_callback=on_open,
                                 on_open_error_callback=lambda _c, err: fail(err),
                                 on_close_callback=lambda _c, reason: fail(reason))
        try:
            await done
        finally:
            conn.close()
            await asyncio.sleep(0.1)
        return state

    state = run_async(scenario())
    assert state["bodies"] == [b"%d" % i for i in range(n)]
    assert state["tags"] == list(range(1, n + 1))
    # Every publish confirmed exactly once, individually or by a `multiple` ack.
    covered = set()
    for tag, multiple in state["acks"]:
        covered |= set(range(1, tag + 1)) if multiple else {tag}
    assert covered == set(range(1, n + 1))


def test_pika_asyncio_adapter_sees_channel_close_text(amqp):
    missing = unique("missing")

    async def scenario():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_channel(ch):
            ch.add_on_close_callback(lambda _c, reason: done.set_result(reason))
            ch.queue_declare(missing, passive=True)

        conn = AsyncioConnection(amqp.params(), on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
                                 on_open_error_callback=lambda _c, err: done.set_exception(RuntimeError(repr(err))))
        try:
            return await done
        finally:
            conn.close()
            await asyncio.sleep(0.1)

    reason = run_async(scenario())
    assert isinstance(reason, pika.exceptions.ChannelClosedByBroker)
    assert (reason.reply_code, reason.reply_text) == (404, f"NOT_FOUND - no queue '{missing}' in vhost '/'")


# --- aio-pika ---------------------------------------------------------------------------------


def test_aio_pika_topic_publish_consume(amqp, cleanup):
    xname = cleanup.exchange(unique("aio-x"))
    qname = cleanup.queue(unique("aio-q"))

    async def scenario():
        conn = await aio_pika.connect(amqp.url())
        async with conn:
            ch = await conn.channel()  # publisher confirms on by default
            await ch.set_qos(prefetch_count=10)
            x = await ch.declare_exchange(xname, aio_pika.ExchangeType.TOPIC, durable=True)
            q = await ch.declare_queue(qname, durable=True)
            await q.bind(x, "eu.#")
            for key in ("eu.fr", "us.ny", "eu.de.berlin"):
                await x.publish(aio_pika.Message(key.encode(), headers={"k": key}, message_id=key,
                                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=key)
            got = []
            async with q.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append((message.routing_key, message.body, message.headers["k"], message.message_id))
                    if len(got) == 2:
                        break
            return got

    got = run_async(scenario())
    assert got == [("eu.fr", b"eu.fr", "eu.fr", "eu.fr"), ("eu.de.berlin", b"eu.de.berlin", "eu.de.berlin", "eu.de.berlin")]


def test_aio_pika_get_nack_requeue_redelivered(amqp, cleanup):
    qname = cleanup.queue(unique("aio-get"))

    async def scenario():
        async with await aio_pika.connect(amqp.url()) as conn:
            ch = await conn.channel()
            q = await ch.declare_queue(qname)
            await ch.default_exchange.publish(aio_pika.Message(b"once"), routing_key=qname)
            m = await q.get(timeout=5)
            assert not m.redelivered
            await m.nack(requeue=True)
            m = await q.get(timeout=5)
            await m.ack()
            empty = await q.get(fail=False)
            return m.body, m.redelivered, empty

    assert run_async(scenario()) == (b"once", True, None)


def test_aio_pika_precondition_failed_text(amqp, cleanup):
    qname = cleanup.queue(unique("aio-redecl"))

    async def scenario():
        async with await aio_pika.connect(amqp.url()) as conn:
            ch = await conn.channel()
            await ch.declare_queue(qname, arguments={"x-max-length": 10})
            ch2 = await conn.channel()
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed) as err:
                await ch2.declare_queue(qname, arguments={"x-max-length": 20})
            return err.value.args

    args = run_async(scenario())
    assert f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{qname}' in vhost '/': received '20' but current is '10'" in str(args)


def test_aio_pika_returned_message_on_mandatory(amqp):
    async def scenario():
        async with await aio_pika.connect(amqp.url()) as conn:
            ch = await conn.channel(on_return_raises=True)
            with pytest.raises(aio_pika.exceptions.DeliveryError) as err:
                await ch.default_exchange.publish(aio_pika.Message(b"x"), routing_key=unique("nobody"), mandatory=True)
            return err.value

    err = run_async(scenario())
    assert err.message is not None and err.frame is not None


def test_aio_pika_stream_from_first(amqp, cleanup):
    qname = cleanup.queue(unique("aio-stream"))

    async def scenario():
        async with await aio_pika.connect(amqp.url()) as conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=50)
            q = await ch.declare_queue(qname, durable=True, arguments={"x-queue-type": "stream"})
            for i in range(5):
                await ch.default_exchange.publish(aio_pika.Message(b"s%d" % i), routing_key=qname)
            got = []
            async with q.iterator(arguments={"x-stream-offset": "first"}) as it:
                async for message in it:
                    got.append((message.body, message.headers["x-stream-offset"]))
                    await message.ack()
                    if len(got) == 5:
                        break
            return got

    assert run_async(scenario()) == [(b"s%d" % i, i) for i in range(5)]


# --- amqp-tools (librabbitmq) -----------------------------------------------------------------

needs_amqp_tools = pytest.mark.skipif(shutil.which("amqp-publish") is None,
                                      reason="Debian's amqp-tools is not installed (apt-get install amqp-tools)")


def cli(amqp, tool, *args, stdin=None):
    out = subprocess.run([tool, "-u", amqp.url(), *args], input=stdin, capture_output=True,
                         timeout=CLI_TIMEOUT_S)
    return out


@needs_amqp_tools
def test_amqp_tools_declare_publish_get(amqp, cleanup, ch):
    q = cleanup.queue(unique("cli"))
    out = cli(amqp, "amqp-declare-queue", "-q", q, "-d")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == q
    ch.queue_declare(q, durable=True, passive=True)
    out = cli(amqp, "amqp-publish", "-r", q, "-b", "from-cli", "-p", "-C", "text/plain", "-H", "origin: cli")
    assert out.returncode == 0, out.stderr
    m, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"from-cli" and props.content_type == "text/plain" and props.delivery_mode == 2
    assert props.headers == {"origin": "cli"}
    ch.basic_publish("", q, b"to-cli")
    out = cli(amqp, "amqp-get", "-q", q)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"to-cli"
    out = cli(amqp, "amqp-get", "-q", q)
    assert out.returncode != 0  # empty queue


@needs_amqp_tools
def test_amqp_tools_consume(amqp, cleanup, ch):
    q = cleanup.queue(unique("cli-consume"))
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"line-%d" % i)
    out = cli(amqp, "amqp-consume", "-q", q, "-c", "3", "-p", "1", "cat")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"line-0line-1line-2"
    assert get_bodies(ch, q) == []


@needs_amqp_tools
def test_amqp_tools_line_buffered_publish_to_exchange(amqp, cleanup, ch):
    q = cleanup.queue(unique("cli-lines"))
    ch.queue_declare(q)
    ch.queue_bind(q, "amq.direct", q)
    out = cli(amqp, "amqp-publish", "-e", "amq.direct", "-r", q, "-l", stdin=b"a\nb\nc\n")
    assert out.returncode == 0, out.stderr
    from amqp_target import message_count, wait_until

    wait_until(lambda: message_count(ch, q) == 3, what="three messages from amqp-publish -l")
    assert get_bodies(ch, q) == [b"a\n", b"b\n", b"c\n"]  # amqp-publish -l keeps the newline


@needs_amqp_tools
def test_amqp_tools_reports_refused_login(amqp):
    out = subprocess.run(["amqp-get", "-u", amqp.url(password="wrong"), "-q", "x"], capture_output=True,
                         timeout=CLI_TIMEOUT_S)
    assert out.returncode != 0
    assert b"ACCESS_REFUSED" in out.stderr or b"refused" in out.stderr.lower() or b"login" in out.stderr.lower(), out.stderr
