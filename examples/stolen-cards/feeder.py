#!/usr/bin/env python3
"""Plays the lab's Python producer against Sluice over pgwire (psycopg).

Creates customers, then sends credit-card transactions at a chosen rate (1/s by default, like
the lab's creditcard_send.py). Some cards are "stolen": their transactions are far above the
customer's average spend, so they show up in fd_possible_stolen_card once a 2-hour window
closes. Event time advances one simulated minute per transaction (--minutes-per-tx), so windows
close while you watch; run again, it continues from the latest transaction in the table.

    python3 examples/stolen-cards/feeder.py                      # 1 transaction/s, forever
    python3 examples/stolen-cards/feeder.py --rate 0 --count 100000   # bulk, as fast as possible
"""

import argparse
import datetime
import random
import time

import psycopg

FIRST = ["Rica", "Pauline", "Jules", "Ana", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus"]
LAST = ["Blaisdell", "Chaffin", "Okafor", "Silva", "Berg", "Ng", "Ortiz", "Kim", "Ross", "Hale"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default="host=127.0.0.1 port=4488 user=sluice dbname=sluice")
    p.add_argument("--customers", type=int, default=100)
    p.add_argument("--rate", type=float, default=1.0, help="transactions per second; 0 = as fast as possible")
    p.add_argument("--count", type=int, default=0, help="transactions to send; 0 = forever")
    p.add_argument("--batch", type=int, default=1000, help="rows per INSERT in bulk mode")
    p.add_argument("--minutes-per-tx", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    rnd = random.Random(a.seed)

    with psycopg.connect(a.dsn, autocommit=True) as conn:
        rows = []
        for i in range(1, a.customers + 1):
            first, last = rnd.choice(FIRST), rnd.choice(LAST)
            rows.append((i, first, last, f"{first.lower()}.{last.lower()}{i}@example.com", float(rnd.randint(50, 500))))
        conn.cursor().executemany(
            "INSERT INTO `ORCL.ADMIN.CUSTOMERS` VALUES (%s, %s, %s, %s, %s)", rows
        )
        print(f"created {a.customers} customers")
        stolen = {rnd.randint(1, a.customers) for _ in range(max(1, a.customers // 20))}
        # Event time goes on from the latest transaction already sent (a second run continues
        # where the first stopped, instead of sending only late rows), else from 2024-05-01.
        latest = conn.execute("SELECT max(transaction_timestamp) FROM credit_card_transactions").fetchone()[0]
        if latest:
            t0 = datetime.datetime.strptime(latest, "%Y-%m-%d %H:%M:%S") + datetime.timedelta(minutes=a.minutes_per_tx)
            print(f"continuing event time from {t0}")
        else:
            t0 = datetime.datetime(2024, 5, 1, 0, 0, 0)
        sent = 0
        pending = []
        while a.count == 0 or sent < a.count:
            user = rnd.randint(1, a.customers)
            amount = round(rnd.uniform(500, 2000) if user in stolen else rnd.uniform(1, 60), 2)
            ts = t0 + datetime.timedelta(minutes=sent * a.minutes_per_tx)
            card = f"4{user:03d}-{user * 7 % 10000:04d}-0000-{user:04d}"
            pending.append((user, card, amount, ts.strftime("%Y-%m-%d %H:%M:%S")))
            sent += 1
            if a.rate > 0 or len(pending) >= a.batch or sent == a.count:
                values = ", ".join("(%s, %s, %s, %s)" for _ in pending)
                conn.execute(
                    f"INSERT INTO credit_card_transactions VALUES {values}",
                    [x for row in pending for x in row],
                )
                pending.clear()
            if a.rate > 0:
                print(f"sent transaction {sent}: user {user} amount {amount} at {ts}")
                time.sleep(1.0 / a.rate)
        print(f"sent {sent} transactions")


if __name__ == "__main__":
    main()
