//! The operator trait, as small as Arroyo's: only `process` is required.

use sluice_catalog::ChangeBatch;

use crate::error::Result;
use crate::state::{StateReader, StateWriter};

/// A streaming operator over changelogs.
pub trait Operator: Send {
    /// Processes a batch that arrived on input `side` (always 0 for one-input operators; 0 left
    /// and 1 right for joins) and returns the changes it causes downstream.
    fn process(&mut self, side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>>;

    /// The input watermark advanced to `watermark` (ms since the epoch): emit what it completes.
    fn on_watermark(&mut self, _watermark: i64) -> Result<Vec<ChangeBatch>> {
        Ok(vec![])
    }

    /// Writes the state changed since the last checkpoint into the epoch's write batch.
    fn checkpoint(&mut self, _w: &mut StateWriter<'_>) -> Result<()> {
        Ok(())
    }

    /// Loads the state of the last completed checkpoint.
    fn restore(&mut self, _r: &StateReader<'_>) -> Result<()> {
        Ok(())
    }

    /// Entries the operator keeps in state (groups, stored rows), for `SHOW JOBS`.
    fn state_rows(&self) -> u64 {
        0
    }

    /// Bytes of the operator's state in the store (its snapshot and deltas), for `SHOW JOBS`.
    fn state_bytes(&self) -> u64 {
        0
    }

    /// A one-line description, for logs.
    fn name(&self) -> &'static str;
}
