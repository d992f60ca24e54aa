-- The stolen-card pipeline on real services. Run with:
--   psql -h 127.0.0.1 -p 4488 -U sluice -f examples/stolen-cards/real-services/pipeline.sql
-- Services (see README.md beside this file): PostgreSQL on 127.0.0.1:5433 (wal_level=logical),
-- a Kafka broker on 127.0.0.1:9092, a MongoDB-wire server on 127.0.0.1:27017.

-- 1. Customers from PostgreSQL by change data capture, email masked before it reaches a topic
--    (the lab's Oracle CDC connector with its MaskField transform).
CREATE SOURCE CONNECTOR customers_cdc WITH (
  'connector.class' = 'io.debezium.connector.postgresql.PostgresConnector',
  'database.hostname' = '127.0.0.1',
  'database.port' = '5433',
  'database.user' = 'postgres',
  'database.password' = 'demo-secret',
  'database.dbname' = 'postgres',
  'topic.prefix' = 'ORCL',
  'table.include.list' = 'ADMIN.CUSTOMERS',
  'slot.name' = 'sluice_customers',
  'plugin.name' = 'pgoutput',
  'transforms' = 'mask',
  'transforms.mask.type' = 'org.apache.kafka.connect.transforms.MaskField$Value',
  'transforms.mask.fields' = 'email'
);

-- 2. Card transactions, produced as JSON to a Kafka topic by producer.py (confluent-kafka).
CREATE TABLE credit_card_transactions (
  user_id BIGINT,
  credit_card_number STRING,
  amount DOUBLE,
  transaction_timestamp STRING
) WITH (
  'connector' = 'kafka',
  'topic' = 'credit_card_transactions',
  'properties.bootstrap.servers' = '127.0.0.1:9092',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'json'
);

-- 3. The lab's Flink SQL, unchanged.
CREATE TABLE fd_transactions_enriched(
   `user_id` BIGINT,
   `credit_card_number` STRING,
   `amount` DOUBLE,
   `transaction_timestamp` TIMESTAMP(0),
   `first_name` STRING,
   `last_name` STRING,
   `email` STRING,
   `avg_credit_spend` DOUBLE,
   WATERMARK FOR transaction_timestamp AS transaction_timestamp
);

INSERT INTO fd_transactions_enriched
   SELECT T.user_id,
      T.credit_card_number,
      T.amount,
      CAST(T.transaction_timestamp AS TIMESTAMP),
      C.FIRST_NAME,
      C.LAST_NAME,
      C.EMAIL,
      C.AVG_CREDIT_SPEND
   FROM credit_card_transactions T
   INNER JOIN `ORCL.ADMIN.CUSTOMERS` C
   ON T.user_id = C.ID;

CREATE TABLE fd_possible_stolen_card(
   `window_start` TIMESTAMP(0),
   `window_end` TIMESTAMP(0),
   `user_id` BIGINT,
   `credit_card_number` STRING,
   `first_name` STRING,
   `last_name` STRING,
   `email` STRING,
   `transaction_timestamp` TIMESTAMP(0),
   `total_credit_spend` DOUBLE,
   `avg_credit_spend` DOUBLE
);
INSERT INTO fd_possible_stolen_card
   SELECT window_start, window_end, user_id, credit_card_number, first_name, last_name, email, transaction_timestamp, SUM(amount) AS total_credit_spend, MAX(avg_credit_spend) as avg_credit_spend
   FROM TABLE (
      TUMBLE(TABLE fd_transactions_enriched, DESCRIPTOR(transaction_timestamp), INTERVAL '2' HOUR ))
   GROUP BY window_start, window_end, user_id, credit_card_number, first_name, last_name, email, transaction_timestamp
   HAVING SUM(amount) > MAX(avg_credit_spend);

-- 4. Flagged cards into MongoDB (the lab's MongoDB Atlas sink connector).
CREATE SINK CONNECTOR stolen_cards_mongo WITH (
  'connector.class' = 'com.mongodb.kafka.connect.MongoSinkConnector',
  'topics' = 'fd_possible_stolen_card',
  'connection.uri' = 'mongodb://127.0.0.1:27017',
  'database' = 'demo-db-mod',
  'collection' = 'fd_possible_stolen_card'
);
