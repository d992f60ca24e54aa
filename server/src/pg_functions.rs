//! Functions whose PostgreSQL answers clients rely on, registered over DataFusion's own in the
//! daemon's context:
//!
//! - `version()`: PostgreSQL's `version()` string ([`crate::pg_params::version_string`]), which
//!   SQLAlchemy, Npgsql and pgJDBC parse for the server's version (PostgreSQL docs "9.26.
//!   System Information Functions").
//! - `now()` / `current_timestamp`: a `timestamp with time zone` (OID 1184) in UTC, as
//!   PostgreSQL's (docs "9.9.5. Current Date/Time"); DataFusion's is a timestamp without time
//!   zone unless its session has a time zone. The value is the statement's start, as both
//!   define it.

use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::{Result, ScalarValue};
use datafusion::functions::datetime::now::NowFunc;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;

/// Registers `version()` and a UTC `now()` in `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(VersionFn { signature: Signature::nullary(Volatility::Immutable) }));
    let mut config = ConfigOptions::default();
    config.execution.time_zone = Some("+00:00".to_string());
    ctx.register_udf(ScalarUDF::from(NowFunc::new_with_config(&config)));
}

/// `version()`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct VersionFn {
    signature: Signature,
}

impl ScalarUDFImpl for VersionFn {
    fn name(&self) -> &str {
        "version"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(crate::pg_params::version_string()))))
    }
}
