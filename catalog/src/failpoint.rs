//! Crash injection at commit boundaries, with the `fail` crate (FreeBSD-style failpoints).
//!
//! Every place where Sluice moves from one durable state to the next (a checkpoint's state
//! write, an append to a topic, a produce to Kafka and its acknowledgement, a sink write and
//! its stored position, a CDC append and its LSN confirmation) calls [`check`] with a name
//! from [`POINTS`]. Unarmed, a point costs one read of the failpoint registry. Tests arm points
//! in a real daemon through the `SLUICE_FAILPOINTS` environment variable, with `fail`'s action
//! syntax (`name=action[->action];name=...`):
//!
//! - `return` or `return(message)`: the call returns an error (the component fails closed);
//! - `return(abort)`: the process aborts on the spot, as `kill -9` would stop it;
//! - `panic(message)`: the calling thread panics;
//! - counts and probabilities: `3*off->return(abort)` aborts on the fourth pass,
//!   `20%return(abort)` on one pass in five.

/// Every failpoint name Sluice evaluates, for documentation and for tests that arm them.
pub const POINTS: &[&str] = &[
    // executor/src/job.rs: a checkpoint, before and after the state of its operators is
    // written into the epoch's write batch, and after the whole epoch committed.
    "checkpoint::before_state",
    "checkpoint::state_write",
    "checkpoint::after_commit",
    // executor/src/job.rs: after an epoch with dead letters (a sink's NOT NULL enforcer
    // `LOG`) committed, before they are written from the outbox to the dead-letter table.
    "checkpoint::before_dead_letters",
    // connectors/src/log.rs: the embedded log's atomic write of rows + checkpoint.
    "log::before_write",
    // connectors/src/kafka_log/: after the write-ahead entry (mod.rs), between produce and
    // acknowledgement (produce.rs), and before the entry is deleted (mod.rs).
    "kafka_log::after_wal",
    "kafka_log::before_ack",
    "kafka_log::after_ack",
    // connectors/src/mongo.rs: between a bulk write and its stored position.
    "mongo::after_bulk_write",
    // connectors/src/kafka/sink.rs: between a Kafka sink's produce (or transaction commit) and its
    // stored position.
    "kafka_sink::after_produce",
    // connectors/src/cdc/: between a CDC append and the LSN confirmation, inside the initial
    // snapshot of a table, and after a piece of a large transaction.
    "cdc::after_append",
    // connectors/src/cdc/stream.rs: after each route's (captured table's) append of a batch of
    // committed transactions, so that the routes of one connector are left at different LSNs.
    "cdc::between_routes",
    "cdc::snapshot_chunk",
    "cdc::after_piece",
];

/// Evaluates the failpoint `name`: `Ok(())` unless it is armed with `return`, in which case the
/// error names the point (or carries the action's argument); `return(abort)` aborts the
/// process. A `panic` action panics here.
pub fn check(name: &str) -> std::result::Result<(), String> {
    fail::fail_point!(name, |arg: Option<String>| {
        match arg.as_deref() {
            Some("abort") => {
                tracing::warn!(failpoint = name, "failpoint: aborting the process");
                std::process::abort()
            }
            Some(msg) => Err(format!("failpoint {name}: {msg}")),
            None => Err(format!("failpoint {name} fired")),
        }
    });
    Ok(())
}

/// Arms the points listed in the environment variable `SLUICE_FAILPOINTS`
/// (`name=actions;name=actions`). Called once by the daemon at start.
///
/// Errors: a malformed entry, named in the message.
pub fn arm_from_env() -> std::result::Result<usize, String> {
    let Ok(spec) = std::env::var("SLUICE_FAILPOINTS") else { return Ok(0) };
    let mut n = 0;
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) =
            entry.split_once('=').ok_or_else(|| format!("SLUICE_FAILPOINTS entry '{entry}' is not name=actions"))?;
        fail::cfg(name.trim(), actions.trim()).map_err(|e| format!("SLUICE_FAILPOINTS entry '{entry}': {e}"))?;
        tracing::warn!(failpoint = name.trim(), actions = actions.trim(), "failpoint armed");
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_point_returns_its_error_and_an_unarmed_one_passes() {
        assert_eq!(check("test::unarmed"), Ok(()));
        fail::cfg("test::armed", "1*return(disk on fire)").unwrap();
        assert_eq!(check("test::armed"), Err("failpoint test::armed: disk on fire".to_string()));
        // The count is used up: the next pass goes through.
        assert_eq!(check("test::armed"), Ok(()));
        fail::remove("test::armed");
    }
}
