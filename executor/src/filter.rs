//! Stateless operators: filter, projection and union.

use arrow::array::BooleanArray;
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use sluice_catalog::dataflow::ExprRef;
use sluice_catalog::ChangeBatch;

use crate::error::{ExecError, Result};
use crate::operator::Operator;
use crate::rows::eval;

/// Keeps rows whose predicate is true; retractions pass the same test as the rows they retract.
pub struct FilterOp {
    predicate: ExprRef,
}

impl FilterOp {
    /// A filter on `predicate` (a boolean expression over the input).
    pub fn new(predicate: ExprRef) -> Self {
        FilterOp { predicate }
    }
}

impl Operator for FilterOp {
    fn process(&mut self, _side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let v = self.predicate.evaluate(&batch.data)?.into_array(batch.num_rows())?;
        let v = if v.data_type() == &DataType::Boolean { v } else { cast(&v, &DataType::Boolean)? };
        let mask = v
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| ExecError::Unsupported("filter predicate is not boolean".into()))?;
        Ok(vec![batch.filter(mask)?])
    }

    fn name(&self) -> &'static str {
        "Filter"
    }
}

/// Evaluates one expression per output column.
pub struct ProjectOp {
    exprs: Vec<ExprRef>,
    schema: SchemaRef,
}

impl ProjectOp {
    /// A projection producing `schema` from `exprs`.
    pub fn new(exprs: Vec<ExprRef>, schema: SchemaRef) -> Self {
        ProjectOp { exprs, schema }
    }
}

impl Operator for ProjectOp {
    fn process(&mut self, _side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let cols = eval(&self.exprs, &batch.data)?;
        // Plan schemas may differ from evaluated arrays in nullability or field names only.
        let cols = cols
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { cast(&c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![batch.with_columns(self.schema.clone(), cols)?])
    }

    fn name(&self) -> &'static str {
        "Project"
    }
}

/// `UNION ALL`: passes every input through in the union's schema.
pub struct UnionOp {
    schema: SchemaRef,
}

impl UnionOp {
    /// A union producing `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        UnionOp { schema }
    }
}

impl Operator for UnionOp {
    fn process(&mut self, _side: usize, batch: ChangeBatch) -> Result<Vec<ChangeBatch>> {
        let cols = batch
            .data
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![batch.with_columns(self.schema.clone(), cols)?])
    }

    fn name(&self) -> &'static str {
        "Union"
    }
}
