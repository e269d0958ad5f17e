"""Vhosts, users and per-vhost configure/write/read permissions, with RabbitMQ's refusal texts.

Users, vhosts and permissions are created through `amqp_target.provision` (rabbitmqctl on
RabbitMQ; a config file for a Ferry started by the suite; Ferry's admin CLI for an external one).
"""

import pytest

from amqp_target import Definitions, channel_close, connection_close, get_bodies, provision, queue_exists, unique

pytestmark = pytest.mark.timeout(120, method="signal")

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def site(amqp, module_start_ferry):
    """Two vhosts and four users:
    - admin: everything on both vhosts;
    - limited: on v1 may configure/write/read only names starting with `lim-`;
    - writer: on v1 may write everything, read and configure nothing;
    - stranger: no permissions at all.
    """
    suffix = unique("acl")
    names = {
        "v1": f"{suffix}-v1", "v2": f"{suffix}-v2",
        "admin": f"{suffix}-admin", "limited": f"{suffix}-limited",
        "writer": f"{suffix}-writer", "stranger": f"{suffix}-stranger",
    }
    defs = Definitions(
        users=[(names[u], PASSWORD, ["administrator"] if u == "admin" else []) for u in ("admin", "limited", "writer", "stranger")],
        vhosts=[names["v1"], names["v2"]],
        permissions=[
            (names["admin"], names["v1"], ".*", ".*", ".*"),
            (names["admin"], names["v2"], ".*", ".*", ".*"),
            (names["limited"], names["v1"], "^lim-.*", "^lim-.*", "^lim-.*"),
            (names["writer"], names["v1"], "^$", ".*", "^$"),
        ],
    )
    with provision(amqp, defs, module_start_ferry) as target:
        yield target, names


def connect(site, user, vhost):
    target, names = site
    return target.connect(vhost=names[vhost], user=names[user], password=PASSWORD)


def test_user_with_permissions_connects(site):
    conn = connect(site, "admin", "v1")
    assert conn.is_open
    conn.close()


def test_wrong_password_for_provisioned_user(site):
    target, names = site
    code, text = connection_close(lambda: target.connect(vhost=names["v1"], user=names["admin"], password="nope"))
    assert (code, text) == (403, "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.")


def test_vhost_without_permission_is_refused(site):
    _target, names = site
    for user, vhost in (("stranger", "v1"), ("limited", "v2")):
        code, text = connection_close(lambda: connect(site, user, vhost))
        assert (code, text) == (530, f"NOT_ALLOWED - access to vhost '{names[vhost]}' refused for user '{names[user]}'")


def test_vhosts_are_isolated(site):
    _target, names = site
    c1, c2 = connect(site, "admin", "v1"), connect(site, "admin", "v2")
    try:
        q = unique("iso")
        ch1, ch2 = c1.channel(), c2.channel()
        ch1.confirm_delivery()
        ch2.confirm_delivery()
        ch1.queue_declare(q)
        assert not queue_exists(c2, q)
        assert channel_close(lambda: c2.channel().queue_declare(q, passive=True)) == (
            404, f"NOT_FOUND - no queue '{q}' in vhost '{names['v2']}'")
        ch2.queue_declare(q)
        ch1.basic_publish("", q, b"in-v1")
        ch2.basic_publish("", q, b"in-v2")
        assert get_bodies(ch1, q) == [b"in-v1"]
        assert get_bodies(ch2, q) == [b"in-v2"]
        x = unique("iso-x")
        ch1.exchange_declare(x, "fanout")
        assert channel_close(lambda: c2.channel().exchange_declare(x, passive=True)) == (
            404, f"NOT_FOUND - no exchange '{x}' in vhost '{names['v2']}'")
        ch1.queue_delete(q)
        ch2.queue_delete(q)
        ch1.exchange_delete(x)
    finally:
        c1.close()
        c2.close()


def test_configure_permission(site):
    _target, names = site
    conn = connect(site, "limited", "v1")
    try:
        ok = "lim-" + unique("q")
        conn.channel().queue_declare(ok, auto_delete=True, exclusive=True)
        denied = unique("other")
        refused = f"ACCESS_REFUSED - access to queue '{denied}' in vhost '{names['v1']}' refused for user '{names['limited']}'"
        assert channel_close(lambda: conn.channel().queue_declare(denied)) == (403, refused)
        xdenied = unique("other-x")
        assert channel_close(lambda: conn.channel().exchange_declare(xdenied, "direct")) == (
            403, f"ACCESS_REFUSED - access to exchange '{xdenied}' in vhost '{names['v1']}' refused for user '{names['limited']}'")
        # Server-named queues (amq.gen-*) need configure permission on their generated name.
        code, text = channel_close(lambda: conn.channel().queue_declare("", exclusive=True))
        assert code == 403 and text.startswith("ACCESS_REFUSED - access to queue 'amq.gen-")
    finally:
        conn.close()


def test_write_permission(site):
    _target, names = site
    admin = connect(site, "admin", "v1")
    limited = connect(site, "limited", "v1")
    try:
        q = "lim-" + unique("w")
        admin.channel().queue_declare(q)
        ch = limited.channel()
        # Publishing needs write on the exchange: the default exchange is `amq.default`.
        ch.basic_publish("", q, b"m")
        code, text = channel_close(lambda: ch.queue_declare(q, passive=True))
        assert (code, text) == (
            403, f"ACCESS_REFUSED - access to exchange 'amq.default' in vhost '{names['v1']}' refused for user '{names['limited']}'")
        # Binding needs write on the queue and read on the exchange.
        assert channel_close(lambda: limited.channel().queue_bind(q, "amq.direct", "k")) == (
            403, f"ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '{names['v1']}' refused for user '{names['limited']}'")
        admin.channel().queue_delete(q)
    finally:
        admin.close()
        limited.close()


def test_read_permission(site):
    _target, names = site
    admin = connect(site, "admin", "v1")
    writer = connect(site, "writer", "v1")
    try:
        q = unique("r")
        ach = admin.channel()
        ach.confirm_delivery()
        ach.queue_declare(q)
        wch = writer.channel()
        wch.confirm_delivery()
        wch.basic_publish("", q, b"written")  # write on amq.default is allowed
        assert get_bodies(ach, q, auto_ack=False) == [b"written"]
        refused = f"ACCESS_REFUSED - access to queue '{q}' in vhost '{names['v1']}' refused for user '{names['writer']}'"
        assert channel_close(lambda: writer.channel().basic_get(q)) == (403, refused)
        assert channel_close(lambda: writer.channel().basic_consume(q, lambda *a: None)) == (403, refused)
        assert channel_close(lambda: writer.channel().queue_purge(q)) == (403, refused)
        # Deleting needs configure.
        assert channel_close(lambda: writer.channel().queue_delete(q)) == (403, refused)
        admin.channel().queue_delete(q)
    finally:
        admin.close()
        writer.close()


def test_amqplain_login_of_provisioned_user(site):
    from amqp_target import RawAmqp

    target, names = site
    with RawAmqp(target.host, target.port) as raw:
        raw.handshake(names["admin"], PASSWORD, mechanism="AMQPLAIN", vhost=names["v2"])
        raw.open_channel(1)


@pytest.mark.skip(reason="guest is limited to loopback connections, but every test client here connects from "
                         "127.0.0.1 (tests may bind only to loopback), so a non-loopback client cannot be made")
def test_guest_refused_from_non_loopback():
    pass


def test_guest_connects_from_loopback(amqp):
    if amqp.user != "guest":
        pytest.skip("the target is not used with the guest user")
    conn = amqp.connect()
    assert conn.is_open
    conn.close()
