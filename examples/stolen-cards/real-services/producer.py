#!/usr/bin/env python3
"""Plays the lab's Python producer: credit-card transactions as JSON to a Kafka topic, with the
ordinary Kafka client confluent-kafka (pip install confluent-kafka).

Event time advances one simulated minute per transaction from --start, so 2-hour windows close
while it runs. Amounts are small (1 to 60) except for --stolen users, whose amounts are far
above any customer's average spend.

    python3 producer.py --bootstrap 127.0.0.1:9092 --count 600
"""

import argparse
import datetime
import json
import random
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--topic", default="credit_card_transactions")
    p.add_argument("--customers", type=int, default=20)
    p.add_argument("--count", type=int, default=600)
    p.add_argument("--rate", type=float, default=0.0, help="messages per second; 0 = as fast as possible")
    p.add_argument("--start", default="2024-05-01 00:00:00", help="event time of the first transaction")
    p.add_argument("--stolen", default="3", help="comma-separated user ids with stolen cards")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    rnd = random.Random(a.seed)
    stolen = {int(s) for s in a.stolen.split(",") if s}
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    for f in admin.create_topics([NewTopic(a.topic, num_partitions=1, replication_factor=1)]).values():
        try:
            f.result()
        except KafkaException as e:  # the topic exists already
            if "TOPIC_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
                raise
    producer = Producer({"bootstrap.servers": a.bootstrap, "enable.idempotence": True})
    t0 = datetime.datetime.fromisoformat(a.start)
    for i in range(a.count):
        user = rnd.randint(1, a.customers)
        amount = round(rnd.uniform(500, 2000) if user in stolen else rnd.uniform(1, 60), 2)
        ts = t0 + datetime.timedelta(minutes=i)
        event = {
            "user_id": user,
            "credit_card_number": f"4{user:03d}-{user * 7 % 10000:04d}-0000-{user:04d}",
            "amount": amount,
            "transaction_timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"),
        }
        producer.produce(a.topic, key=str(user), value=json.dumps(event))
        producer.poll(0)
        if a.rate > 0:
            time.sleep(1.0 / a.rate)
    left = producer.flush(30)
    if left:
        raise SystemExit(f"{left} messages not delivered")
    print(f"produced {a.count} transactions to {a.topic}")


if __name__ == "__main__":
    main()
