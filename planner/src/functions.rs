//! Functions Sluice adds to DataFusion's library.
//!
//! - `sluice_window(ts, slide_ms, size_ms, k, which)`: window assignment behind Flink's window
//!   TVFs (see [`crate::rewrite`]). For a row with event time `ts` (ms since the epoch) it returns
//!   the `k`-th window holding `ts` among windows of `size_ms` starting every `slide_ms`: the
//!   window is `[start, end)` with `start = floor(ts / slide) * slide - k * slide`, as Flink's
//!   TUMBLE and HOP define it. `which` selects `0` start, `1` end, `2` window_time (`end - 1 ms`).
//!   Returns NULL when that window does not hold `ts` (HOP with a size that is not a multiple of
//!   the slide). The streaming planner recognises window columns by this function.
//! - `TO_TIMESTAMP_LTZ(n [, precision])`: Flink's conversion of epoch seconds (precision 0) or
//!   milliseconds (precision 3, the default) into a `TIMESTAMP_LTZ(3)`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, TimestampMillisecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Name of the window-assignment function.
pub const WINDOW_FN: &str = "sluice_window";

/// The functions to register in every DataFusion context Sluice creates.
pub fn udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(WindowFn::new()), ScalarUDF::from(ToTimestampLtz::new())]
}

/// `sluice_window` (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WindowFn {
    signature: Signature,
}

impl WindowFn {
    fn new() -> Self {
        WindowFn { signature: Signature::any(5, Volatility::Immutable) }
    }
}

fn scalar_i64(v: &ColumnarValue, what: &str) -> Result<i64> {
    match v {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(Some(n)) => Ok(n),
            _ => exec_err!("{what} must be a non-null integer"),
        },
        ColumnarValue::Array(_) => exec_err!("{what} must be a constant"),
    }
}

/// Casts any timestamp array to milliseconds without time zone.
pub fn to_millis(a: &ArrayRef) -> Result<Int64Array> {
    let ms = cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    let ms = ms.as_any().downcast_ref::<TimestampMillisecondArray>().expect("cast result");
    Ok(Int64Array::new(ms.values().clone(), ms.nulls().cloned()))
}

impl ScalarUDFImpl for WindowFn {
    fn name(&self) -> &str {
        WINDOW_FN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match &args[0] {
            DataType::Timestamp(_, _) => Ok(DataType::Timestamp(TimeUnit::Millisecond, None)),
            other => plan_err!("the time column of a window must be a TIMESTAMP or TIMESTAMP_LTZ, found {other}"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let slide = scalar_i64(&args.args[1], "the window slide")?;
        let size = scalar_i64(&args.args[2], "the window size")?;
        let k = scalar_i64(&args.args[3], "the window index")?;
        let which = scalar_i64(&args.args[4], "the window bound")?;
        if slide <= 0 || size <= 0 {
            return exec_err!("window size and slide must be positive");
        }
        let ts = args.args[0].to_array(args.number_rows)?;
        let ms = to_millis(&ts)?;
        let out: TimestampMillisecondArray = ms
            .iter()
            .map(|v| {
                v.and_then(|t| {
                    let start = t.div_euclid(slide) * slide - k * slide;
                    let end = start + size;
                    (t < end).then_some(match which {
                        0 => start,
                        1 => end,
                        _ => end - 1,
                    })
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// Flink's `TO_TIMESTAMP_LTZ(numeric [, precision])`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToTimestampLtz {
    signature: Signature,
}

impl ToTimestampLtz {
    fn new() -> Self {
        ToTimestampLtz { signature: Signature::variadic_any(Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for ToTimestampLtz {
    fn name(&self) -> &str {
        "to_timestamp_ltz"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.is_empty() || args.len() > 2 || !args[0].is_numeric() {
            return plan_err!("TO_TIMESTAMP_LTZ takes a numeric epoch value and an optional precision (0 or 3)");
        }
        Ok(DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let precision = match args.args.get(1) {
            Some(p) => scalar_i64(p, "the precision")?,
            None => 3,
        };
        let factor = match precision {
            0 => 1000,
            3 => 1,
            p => return exec_err!("TO_TIMESTAMP_LTZ precision must be 0 or 3, got {p}"),
        };
        let n = args.args[0].to_array(args.number_rows)?;
        let n = cast(&n, &DataType::Int64)?;
        let n = n.as_any().downcast_ref::<Int64Array>().expect("cast result");
        let out: TimestampMillisecondArray = n.iter().map(|v| v.map(|x| x * factor)).collect();
        Ok(ColumnarValue::Array(Arc::new(out.with_timezone("+00:00"))))
    }
}
