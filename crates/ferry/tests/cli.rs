//! End-to-end tests of the command-line tools against a real `ferry serve`.

mod common;

use std::collections::BTreeSet;

use common::{ferry, ferry_env, Broker};

/// Lines of `text`, sorted (messages of several partitions arrive interleaved).
fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The data rows of a table printed by the tools (after the header line with `first`).
fn table_rows<'a>(text: &'a str, first: &str) -> Vec<Vec<&'a str>> {
    text.lines()
        .skip_while(|l| !l.starts_with(first))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[test]
fn topic_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());

    let created = broker.run(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "--config",
            "retention.ms=3600000",
        ],
        "",
    );
    assert_eq!(created.expect_ok("create").trim(), "Created topic orders.");
    broker
        .run(&["topic", "create", "audit"], "")
        .expect_ok("create audit");

    let listed = broker.run(&["topic", "list"], "");
    let names: Vec<&str> = listed.expect_ok("list").lines().collect();
    assert_eq!(names, vec!["audit", "orders"]);

    let described = broker.run(&["topic", "describe", "orders"], "");
    let text = described.expect_ok("describe");
    assert!(text.starts_with("Topic: orders  Partitions: 3"), "{text}");
    let partitions = table_rows(text, "PARTITION");
    assert_eq!(partitions.len(), 3, "{text}");
    for (i, row) in partitions.iter().enumerate() {
        assert_eq!(row[0], i.to_string(), "{text}");
        assert_eq!(&row[4..], &["0", "0", "0"], "empty partitions: {text}");
    }
    let configs = table_rows(text, "KEY");
    let retention = configs
        .iter()
        .find(|r| r[0] == "retention.ms")
        .expect("retention.ms listed");
    assert_eq!(retention[1], "3600000", "{text}");

    let altered = broker.run(
        &[
            "topic",
            "alter",
            "orders",
            "--partitions",
            "4",
            "--config",
            "retention.ms=7200000",
        ],
        "",
    );
    altered.expect_ok("alter");
    let text = broker.run(&["topic", "describe", "orders"], "").stdout;
    assert_eq!(table_rows(&text, "PARTITION").len(), 4, "{text}");
    let configs = table_rows(&text, "KEY");
    assert!(
        configs
            .iter()
            .any(|r| r[..2] == ["retention.ms", "7200000"]),
        "{text}"
    );

    broker
        .run(
            &[
                "topic",
                "alter",
                "orders",
                "--delete-config",
                "retention.ms",
            ],
            "",
        )
        .expect_ok("delete config");
    let text = broker.run(&["topic", "describe", "orders"], "").stdout;
    let configs = table_rows(&text, "KEY");
    let retention = configs
        .iter()
        .find(|r| r[0] == "retention.ms")
        .expect("still listed");
    assert_ne!(retention[1], "7200000", "override removed: {text}");

    let again = broker.run(&["topic", "create", "orders"], "");
    let line = again.expect_one_line_error("create twice");
    assert!(line.contains("TOPIC_ALREADY_EXISTS"), "{line}");

    let shrink = broker.run(&["topic", "alter", "orders", "--partitions", "2"], "");
    assert!(
        shrink
            .expect_one_line_error("shrink")
            .contains("INVALID_PARTITIONS"),
        "{shrink:?}"
    );

    broker
        .run(&["topic", "delete", "orders"], "")
        .expect_ok("delete");
    let listed = broker.run(&["topic", "list"], "");
    assert_eq!(listed.expect_ok("list").trim(), "audit");
    let missing = broker.run(&["topic", "describe", "orders"], "");
    assert!(
        missing
            .expect_one_line_error("describe deleted")
            .contains("UNKNOWN_TOPIC_OR_PARTITION"),
        "{missing:?}"
    );
}

#[test]
fn produce_then_consume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    broker
        .run(&["topic", "create", "events", "--partitions", "2"], "")
        .expect_ok("create");

    let input: String = (0..20).map(|i| format!("key-{i}:value {i}\n")).collect();
    broker
        .run(
            &[
                "produce",
                "events",
                "--key-separator",
                ":",
                "--header",
                "source=test",
                "--compression",
                "lz4",
            ],
            &input,
        )
        .expect_ok("produce");

    let consumed = broker.run(
        &[
            "consume",
            "events",
            "--from-beginning",
            "--max-messages",
            "20",
            "--timeout-ms",
            "10000",
            "--format",
            "%k|%v|%h",
        ],
        "",
    );
    let expected: Vec<String> = sorted_lines(
        &(0..20)
            .map(|i| format!("key-{i}|value {i}|source=test\n"))
            .collect::<String>(),
    );
    assert_eq!(sorted_lines(consumed.expect_ok("consume")), expected);

    // The same key always lands on the same partition (Java's murmur2 partitioner).
    let json = broker.run(
        &[
            "consume",
            "events",
            "--from-beginning",
            "--max-messages",
            "20",
            "--timeout-ms",
            "10000",
            "--format",
            "json",
        ],
        "",
    );
    let mut by_partition = [BTreeSet::new(), BTreeSet::new()];
    for line in json.expect_ok("json").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(v["topic"], "events");
        assert_eq!(v["headers"]["source"], "test");
        let p = v["partition"].as_u64().expect("partition") as usize;
        by_partition[p].insert(v["key"].as_str().expect("key").to_owned());
    }
    assert_eq!(by_partition[0].len() + by_partition[1].len(), 20);
    assert!(by_partition[0].is_disjoint(&by_partition[1]));

    // One partition from an offset.
    let from_offset = broker.run(
        &[
            "consume",
            "events",
            "--partition",
            "1",
            "--offset",
            "1",
            "--timeout-ms",
            "1500",
            "--format",
            "%p %o",
        ],
        "",
    );
    let lines: Vec<String> = from_offset
        .expect_ok("offset")
        .lines()
        .map(str::to_owned)
        .collect();
    let count = by_partition[1].len();
    let expected: Vec<String> = (1..count).map(|o| format!("1 {o}")).collect();
    assert_eq!(lines, expected);

    // By time: everything is after the epoch, nothing is after the year 3000.
    let all = broker.run(
        &[
            "consume",
            "events",
            "--from-time",
            "1970-01-01T00:00:00Z",
            "--timeout-ms",
            "1500",
        ],
        "",
    );
    assert_eq!(all.expect_ok("from time").lines().count(), 20);
    let none = broker.run(
        &[
            "consume",
            "events",
            "--from-time",
            "3000-01-01T00:00:00Z",
            "--timeout-ms",
            "1000",
        ],
        "",
    );
    assert_eq!(none.expect_ok("future").lines().count(), 0);

    // acks=0 and a gzip batch, then the latest messages only.
    broker
        .run(
            &[
                "produce",
                "events",
                "--acks",
                "0",
                "--compression",
                "gzip",
                "--partition",
                "0",
            ],
            "late\n",
        )
        .expect_ok("acks=0");
    let late = broker.run(
        &[
            "consume",
            "events",
            "--partition",
            "0",
            "--offset",
            &by_partition[0].len().to_string(),
            "--max-messages",
            "1",
            "--timeout-ms",
            "10000",
        ],
        "",
    );
    assert_eq!(late.expect_ok("late").trim(), "late");
}

#[test]
fn group_consume_describe_and_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    broker
        .run(&["topic", "create", "jobs", "--partitions", "2"], "")
        .expect_ok("create");
    let input: String = (0..6).map(|i| format!("job {i}\n")).collect();
    broker
        .run(&["produce", "jobs"], &input)
        .expect_ok("produce");

    let consumed = broker.run(
        &[
            "consume",
            "jobs",
            "--group",
            "workers",
            "--from-beginning",
            "--max-messages",
            "6",
            "--timeout-ms",
            "20000",
        ],
        "",
    );
    assert_eq!(consumed.expect_ok("group consume").lines().count(), 6);

    let listed = broker.run(&["group", "list"], "");
    let rows = table_rows(listed.expect_ok("group list"), "GROUP");
    assert!(rows.iter().any(|r| r[0] == "workers"), "{listed:?}");

    let described = broker.run(&["group", "describe", "workers"], "");
    let text = described.expect_ok("describe");
    let rows = table_rows(text, "TOPIC");
    assert_eq!(rows.len(), 2, "{text}");
    let mut total = 0;
    for row in &rows {
        assert_eq!(row[0], "jobs", "{text}");
        assert_eq!(row[2], row[3], "committed = log end: {text}");
        assert_eq!(row[4], "0", "lag 0: {text}");
        total += row[3].parse::<i64>().expect("log end");
    }
    assert_eq!(total, 6, "{text}");

    // More messages: the lag shows them.
    broker
        .run(&["produce", "jobs"], "a\nb\nc\n")
        .expect_ok("produce more");
    // `ferry group describe workers`, the group's total lag, `ferry group reset-offsets`
    // of its topic.
    let describe = || broker.run(&["group", "describe", "workers"], "").stdout;
    let lag = |text: &str| -> i64 {
        table_rows(text, "TOPIC")
            .iter()
            .map(|r| r[4].parse::<i64>().expect("lag"))
            .sum()
    };
    let reset = |how: &[&str]| {
        let mut args = vec!["group", "reset-offsets", "workers", "--topic", "jobs"];
        args.extend_from_slice(how);
        broker.run(&args, "")
    };
    let text = describe();
    assert_eq!(lag(&text), 3, "{text}");

    // A dry run changes nothing.
    let dry = reset(&["--to-earliest"]);
    let text = dry.expect_ok("dry run");
    assert!(text.contains("Dry run"), "{text}");
    assert!(
        table_rows(text, "TOPIC").iter().all(|r| r[3] == "0"),
        "{text}"
    );
    let after_dry = describe();
    assert_eq!(lag(&after_dry), 3, "{after_dry}");

    reset(&["--to-earliest", "--execute"]).expect_ok("reset");
    let text = describe();
    assert!(
        table_rows(&text, "TOPIC").iter().all(|r| r[2] == "0"),
        "{text}"
    );
    assert_eq!(lag(&text), 9, "{text}");

    // The group reads everything again from the reset offsets.
    let again = broker.run(
        &[
            "consume",
            "jobs",
            "--group",
            "workers",
            "--max-messages",
            "9",
            "--timeout-ms",
            "20000",
        ],
        "",
    );
    assert_eq!(again.expect_ok("consume after reset").lines().count(), 9);

    // To an offset, clamped into the log.
    reset(&["--to-offset", "1000", "--execute"]).expect_ok("reset to offset");
    let text = describe();
    assert!(
        table_rows(&text, "TOPIC").iter().all(|r| r[4] == "0"),
        "{text}"
    );

    // To a time after every message: the end of the log.
    reset(&["--to-earliest", "--execute"]).expect_ok("reset to earliest again");
    reset(&["--to-time", "3000-01-01T00:00:00Z", "--execute"]).expect_ok("reset to time");
    let text = describe();
    assert!(
        table_rows(&text, "TOPIC").iter().all(|r| r[4] == "0"),
        "{text}"
    );

    let unknown = broker.run(&["group", "describe", "nobody"], "");
    assert!(
        unknown
            .expect_one_line_error("unknown group")
            .contains("nobody"),
        "{unknown:?}"
    );
}

#[test]
fn errors_are_one_line() {
    // Nothing listens on port 1.
    let refused = ferry(&["topic", "list", "--bootstrap", "127.0.0.1:1"], "");
    assert!(refused
        .expect_one_line_error("refused")
        .contains("cannot connect to 127.0.0.1:1"));

    let usage = ferry(&["consume"], "");
    assert!(usage.expect_one_line_error("usage").contains("<TOPIC>"));
    assert_eq!(usage.status.and_then(|s| s.code()), Some(2));

    let format = ferry(
        &[
            "consume",
            "t",
            "--format",
            "%q",
            "--bootstrap",
            "127.0.0.1:1",
        ],
        "",
    );
    assert!(format.expect_one_line_error("format").contains("%q"));

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[kafka]\nlisten = \"127.0.0.1:0\"\nlisten_port = 1\n",
    )
    .expect("write");
    let bad_file = ferry(&["serve", "--config", config.to_str().expect("utf-8")], "");
    let line = bad_file.expect_one_line_error("unknown config key");
    assert!(
        line.contains("line 3") && line.contains("listen_port"),
        "{line}"
    );

    let data = dir.path().join("data");
    let bad_default = ferry_env(
        &[
            "serve",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--kafka-listen",
            "127.0.0.1:0",
        ],
        "",
        &[("FERRY_FLUSH_MODE", "sometimes")],
    );
    let line = bad_default.expect_one_line_error("bad flush mode");
    assert!(
        line.contains("topic_defaults") && line.contains("sometimes"),
        "{line}"
    );

    let broker = Broker::start(dir.path());
    let missing = broker.run(&["consume", "nope", "--timeout-ms", "100"], "");
    assert!(missing
        .expect_one_line_error("unknown topic")
        .contains("UNKNOWN_TOPIC_OR_PARTITION"));
    let no_partition = broker.run(&["produce", "auto", "--partition", "5"], "x\n");
    assert!(no_partition
        .expect_one_line_error("bad partition")
        .contains("no partition 5"));
    let no_separator = broker.run(
        &["produce", "auto", "--key-separator", "="],
        "no separator here\n",
    );
    assert!(no_separator
        .expect_one_line_error("separator")
        .contains("line 1"));
}

#[test]
fn sigterm_flushes_and_data_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start_with(dir.path(), &["--flush-mode", "sync"]);
    broker
        .run(
            &["produce", "durable", "--acks", "all"],
            "one\ntwo\nthree\n",
        )
        .expect_ok("produce");
    let status = broker.terminate().expect("broker stopped within the bound");
    assert!(status.success(), "exit {status:?}: {:?}", broker.log());
    let log = broker.log();
    assert!(
        log.iter().any(|l| l.contains("received SIGTERM")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("stopped cleanly")), "{log:?}");
    drop(broker);

    let broker = Broker::start(dir.path());
    let consumed = broker.run(
        &[
            "consume",
            "durable",
            "--from-beginning",
            "--max-messages",
            "3",
            "--timeout-ms",
            "10000",
        ],
        "",
    );
    assert_eq!(
        consumed.expect_ok("consume after restart"),
        "one\ntwo\nthree\n"
    );
}

#[test]
fn users_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());

    let listed = broker.admin(&["user", "list"]);
    assert_eq!(
        table_rows(listed.expect_ok("user list"), "USER"),
        vec![vec!["guest", "administrator"]]
    );
    let added = broker.admin(&[
        "user",
        "add",
        "alice",
        "--password",
        "s3cret",
        "--tags",
        "administrator,management",
    ]);
    assert_eq!(added.expect_ok("user add"), "Created user alice.\n");
    // Repeated --tags work as well as a comma-separated list.
    let updated = broker.admin(&[
        "user",
        "add",
        "bob",
        "--password",
        "pw",
        "--tags",
        "a",
        "--tags",
        "b",
    ]);
    assert_eq!(updated.expect_ok("user add bob"), "Created user bob.\n");
    let listed = broker.admin(&["user", "list"]);
    assert_eq!(
        table_rows(listed.expect_ok("user list"), "USER"),
        vec![
            vec!["alice", "administrator,management"],
            vec!["bob", "a,b"],
            vec!["guest", "administrator"],
        ]
    );

    // alice administers; bob is no administrator; a wrong password is refused.
    let as_alice = broker.admin(&[
        "user",
        "delete",
        "guest",
        "--admin-user",
        "alice",
        "--admin-password",
        "s3cret",
    ]);
    assert_eq!(as_alice.expect_ok("delete guest"), "Deleted user guest.\n");
    let as_bob = broker.admin(&[
        "user",
        "list",
        "--admin-user",
        "bob",
        "--admin-password",
        "pw",
    ]);
    let line = as_bob.expect_one_line_error("not an administrator");
    assert!(
        line.contains("refused user 'bob'") && line.contains("401"),
        "{line}"
    );
    let as_guest = broker.admin(&["user", "list"]);
    assert!(as_guest
        .expect_one_line_error("guest is gone")
        .contains("refused user 'guest'"));

    let missing = broker.admin(&[
        "user",
        "delete",
        "nobody",
        "--admin-user",
        "alice",
        "--admin-password",
        "s3cret",
    ]);
    assert!(missing
        .expect_one_line_error("unknown user")
        .contains("no user 'nobody'"));

    let as_alice = ["--admin-user", "alice", "--admin-password", "s3cret"];
    let raised = broker.admin(
        &[
            &["limits", "set", "--memory-high-watermark-bytes", "1"][..],
            &as_alice,
        ]
        .concat(),
    );
    let rows = table_rows(raised.expect_ok("limits set"), "RESOURCE");
    assert_eq!(rows[0], vec!["memory", "1", "ALARM"], "{rows:?}");
    let restored = broker.admin(
        &[
            &["limits", "set", "--memory-high-watermark-bytes", "default"][..],
            &as_alice,
        ]
        .concat(),
    );
    let rows = table_rows(restored.expect_ok("limits restored"), "RESOURCE");
    assert_eq!(rows[0][2], "ok", "{rows:?}");
    let bad = broker.admin(&["limits", "set", "--disk-free-limit-bytes", "lots"]);
    assert!(bad
        .expect_one_line_error("bad limit")
        .contains("not a byte count"));

    let nothing = ferry(&["user", "list", "--http", "127.0.0.1:1"], "");
    assert!(nothing
        .expect_one_line_error("no admin API")
        .contains("cannot connect to the admin API at 127.0.0.1:1"));
}

#[test]
fn vhosts_and_permissions_from_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(dir.path());
    broker
        .admin(&["user", "add", "app", "--password", "pw"])
        .expect_ok("user add");
    assert_eq!(
        broker
            .admin(&["vhost", "add", "staging"])
            .expect_ok("vhost add"),
        "Created vhost staging.\n"
    );
    assert_eq!(
        sorted_lines(broker.admin(&["vhost", "list"]).expect_ok("vhost list")),
        vec!["/", "staging"]
    );
    broker
        .admin(&[
            "permissions",
            "set",
            "--vhost",
            "staging",
            "app",
            "^app-",
            ".*",
            "",
        ])
        .expect_ok("permissions set");
    let listed = broker.admin(&["permissions", "list", "--vhost", "staging"]);
    assert_eq!(
        table_rows(listed.expect_ok("permissions list"), "USER"),
        vec![vec!["app", "staging", "^app-", ".*", "\"\""]]
    );
    let bad = broker.admin(&["permissions", "set", "app", "(", ".*", ".*"]);
    assert!(bad
        .expect_one_line_error("bad pattern")
        .contains("configure pattern"));
    let no_vhost = broker.admin(&[
        "permissions",
        "set",
        "--vhost",
        "nope",
        "app",
        ".*",
        ".*",
        ".*",
    ]);
    assert!(no_vhost
        .expect_one_line_error("unknown vhost")
        .contains("no vhost 'nope'"));
    let queues = broker.admin(&["queue", "list"]);
    assert_eq!(
        table_rows(queues.expect_ok("queue list"), "VHOST"),
        Vec::<Vec<&str>>::new()
    );
    let exchanges = broker.admin(&["exchange", "list", "--vhost", "staging"]);
    let rows = table_rows(exchanges.expect_ok("exchange list"), "VHOST");
    assert!(
        rows.contains(&vec!["staging", "amq.fanout", "fanout", "durable"]),
        "{rows:?}"
    );
    let missing = broker.admin(&["queue", "list", "--vhost", "nope"]);
    assert!(missing
        .expect_one_line_error("unknown vhost")
        .contains("no vhost 'nope'"));
    broker
        .admin(&["permissions", "clear", "--vhost", "staging", "app"])
        .expect_ok("permissions clear");
    broker
        .admin(&["vhost", "delete", "staging"])
        .expect_ok("vhost delete");
    assert_eq!(
        broker.admin(&["vhost", "list"]).expect_ok("vhost list"),
        "/\n"
    );
}

#[test]
fn definitions_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        r#"
[[amqp.users]]
name = "ops"
password = "pw"
tags = ["administrator"]

[[amqp.vhosts]]
name = "staging"

[[amqp.permissions]]
user = "ops"
vhost = "staging"
configure = "^ops-"
write = ".*"
read = ".*"
"#,
    )
    .expect("write config");
    let config = config.to_str().expect("utf-8");
    let broker = Broker::start_with(dir.path(), &["--config", config]);
    let as_ops = ["--admin-user", "ops", "--admin-password", "pw"];
    let users = broker.admin(&[&["user", "list"][..], &as_ops].concat());
    assert_eq!(
        table_rows(users.expect_ok("user list"), "USER"),
        vec![vec!["guest", "administrator"], vec!["ops", "administrator"]]
    );
    let permissions = broker.admin(&["permissions", "list", "--vhost", "staging"]);
    assert_eq!(
        table_rows(permissions.expect_ok("permissions list"), "USER"),
        vec![vec!["ops", "staging", "^ops-", ".*", ".*"]]
    );
    drop(broker);

    // A permission of a user nobody created stops the start with one line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[amqp.permissions]]\nuser = \"ghost\"\nvhost = \"/\"\nconfigure = \".*\"\nwrite = \".*\"\nread = \".*\"\n",
    )
    .expect("write config");
    let data = dir.path().join("data2");
    let refused = ferry(
        &[
            "serve",
            "--config",
            bad.to_str().expect("utf-8"),
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--kafka-listen",
            "127.0.0.1:0",
            "--no-http",
        ],
        "",
    );
    assert_eq!(
        refused.status.and_then(|s| s.code()),
        Some(1),
        "{refused:?}"
    );
    let last = refused.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("no user 'ghost'"),
        "{refused:?}"
    );
}
