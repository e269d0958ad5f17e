"""Producer process for the crash-safety test (run as a script, not collected by pytest).

Produces `id-00000000`, `id-00000001`, ... round-robin over the partitions with acks=all and
idempotence on, until the stop file appears (or the id limit is reached), then flushes.
Every delivery report is appended to the ack log as one line:

    OK <partition> <offset> <value>
    ERR <code> <value> <reason>

Exit status: 0 when everything produced was acknowledged, 1 otherwise.
"""

import os
import sys
import time

from confluent_kafka import KafkaException, Producer

# Pause between messages: keeps the run spread over time so the broker dies mid-stream.
SEND_INTERVAL_S = 0.002
# Upper bound of messages, whatever happens.
MAX_MESSAGES = 200_000
# Bound of the final flush; longer than a broker restart takes.
FLUSH_TIMEOUT_S = 150


def main() -> int:
    bootstrap, topic, partitions, ack_log, stop_file = sys.argv[1:6]
    partitions = int(partitions)
    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        # Outlast the broker's downtime: messages wait for the restart instead of failing.
        "message.timeout.ms": 120000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
    })
    log = open(ack_log, "a", buffering=1)

    def on_delivery(err, msg):
        value = msg.value().decode()
        if err is None:
            log.write(f"OK {msg.partition()} {msg.offset()} {value}\n")
        else:
            log.write(f"ERR {err.code()} {value} {err.str()}\n")

    sent = 0
    while sent < MAX_MESSAGES and not os.path.exists(stop_file):
        value = f"id-{sent:08d}".encode()
        try:
            p.produce(topic, value=value, partition=sent % partitions, on_delivery=on_delivery)
        except BufferError:
            p.poll(0.1)
            continue
        except KafkaException as err:
            log.write(f"ERR fatal {value.decode()} {err}\n")
            return 1
        sent += 1
        p.poll(0)
        time.sleep(SEND_INTERVAL_S)
    remaining = p.flush(FLUSH_TIMEOUT_S)
    log.write(f"DONE sent={sent} remaining={remaining}\n")
    log.close()
    return 0 if remaining == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
