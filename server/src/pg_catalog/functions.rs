//! The functions PostgreSQL clients' catalog queries call, as DataFusion scalar UDFs:
//! `pg_get_userbyid`, `pg_table_is_visible`, `format_type`, `obj_description`,
//! `col_description`, `shobj_description`, `pg_get_expr`, `pg_get_indexdef`,
//! `pg_get_constraintdef`, `pg_get_statisticsobjdef_columns`, `pg_encoding_to_char`,
//! `current_database`, `current_schema`, `has_table_privilege`, `has_schema_privilege`, and
//! the two halves of a `::regclass` cast that [`super::rewrite`] produces:
//! `sluice_regclass_oid(text)` (a name to its OID) and `sluice_regclass_name(oid)`.

use std::sync::{Arc, Weak};

use arrow::array::{Array, ArrayRef, BooleanArray, Int32Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility};
use sluice_catalog::TableDef;

use super::relations::{key_attnums, pkey_name};
use super::types::format_type;
use super::{constraint_oid, index_oid, rel_oid, DATABASE, DATABASE_OWNER_OID, SLUICE_ROLE_OID};
use crate::engine::Engine;

type Body = Arc<dyn Fn(&[ArrayRef], usize) -> Result<ArrayRef> + Send + Sync>;

/// A catalog function: a name, the argument counts it takes (any types; the body casts), a
/// return type and a body over whole argument arrays.
struct PgFn {
    name: &'static str,
    signature: Signature,
    ret: DataType,
    body: Body,
}

impl std::fmt::Debug for PgFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}
impl PartialEq for PgFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for PgFn {}
impl std::hash::Hash for PgFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ScalarUDFImpl for PgFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.ret.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = args.args.iter().map(|a| a.to_array(n)).collect::<Result<Vec<_>>>()?;
        Ok(ColumnarValue::Array((self.body)(&arrays, n)?))
    }
}

/// A catalog function `name` taking any of `arities` arguments of any type.
pub(super) fn udf(name: &'static str, arities: &[usize], ret: DataType, body: impl Fn(&[ArrayRef], usize) -> Result<ArrayRef> + Send + Sync + 'static) -> ScalarUDF {
    let sigs = arities.iter().map(|&k| if k == 0 { TypeSignature::Nullary } else { TypeSignature::Any(k) }).collect();
    ScalarUDF::from(PgFn { name, signature: Signature::one_of(sigs, Volatility::Stable), ret, body: Arc::new(body) })
}

/// An argument as int8 (NULL stays NULL).
pub(super) fn ints(a: &ArrayRef) -> Result<Int64Array> {
    let a = if matches!(a.data_type(), DataType::Null) { arrow::array::new_null_array(&DataType::Int64, a.len()) } else { cast(a, &DataType::Int64)? };
    Ok(a.as_any().downcast_ref::<Int64Array>().expect("int64").clone())
}

/// An argument as text.
pub(super) fn texts(a: &ArrayRef) -> Result<StringArray> {
    let a = cast(a, &DataType::Utf8)?;
    Ok(a.as_any().downcast_ref::<StringArray>().expect("utf8").clone())
}

/// A text function of one OID argument.
fn by_oid(args: &[ArrayRef], f: impl Fn(i64) -> Option<String>) -> Result<ArrayRef> {
    let oids = ints(&args[0])?;
    Ok(Arc::new(oids.iter().map(|o| o.and_then(&f)).collect::<StringArray>()))
}

/// `n` NULL texts.
pub(super) fn nulls(n: usize) -> Result<ArrayRef> {
    Ok(arrow::array::new_null_array(&DataType::Utf8, n))
}

/// The table whose OID (`kind` `rel`, `idx` or `con`) is `oid`.
fn table_by(engine: &Weak<Engine>, oid: i64, of: fn(&str) -> i64) -> Option<TableDef> {
    let engine = engine.upgrade()?;
    let tables = engine.tables.read().unwrap();
    tables.values().find(|e| of(&e.def.name) == oid).map(|e| e.def.clone())
}

fn key_list(d: &TableDef) -> String {
    let attnums = key_attnums(d);
    attnums.iter().map(|k| crate::pg_catalog::rewrite::quote_ident(&d.columns[*k as usize - 1].name)).collect::<Vec<_>>().join(", ")
}

/// The catalog functions, over `engine`'s tables where they describe them.
pub(super) fn udfs(engine: Weak<Engine>) -> Vec<ScalarUDF> {
    let (e1, e2, e3) = (engine.clone(), engine.clone(), engine);
    vec![
        udf("pg_get_userbyid", &[1], DataType::Utf8, |a, _| {
            by_oid(a, |o| {
                Some(match o {
                    SLUICE_ROLE_OID => "sluice".to_string(),
                    DATABASE_OWNER_OID => "pg_database_owner".to_string(),
                    other => format!("unknown (OID={other})"),
                })
            })
        }),
        udf("pg_table_is_visible", &[1], DataType::Boolean, |a, _| {
            Ok(Arc::new(ints(&a[0])?.iter().map(|o| o.map(|_| true)).collect::<BooleanArray>()))
        }),
        udf("format_type", &[2], DataType::Utf8, |a, _| {
            let (oids, mods) = (ints(&a[0])?, ints(&a[1])?);
            let out: StringArray =
                oids.iter().zip(mods.iter()).map(|(o, m)| o.map(|o| format_type(o, m.map(|m| m as i32)))).collect();
            Ok(Arc::new(out))
        }),
        udf("obj_description", &[1, 2], DataType::Utf8, |_, n| nulls(n)),
        udf("col_description", &[2], DataType::Utf8, |_, n| nulls(n)),
        udf("shobj_description", &[2], DataType::Utf8, |_, n| nulls(n)),
        udf("pg_get_expr", &[2, 3], DataType::Utf8, |_, n| nulls(n)),
        udf("pg_get_statisticsobjdef_columns", &[1], DataType::Utf8, |_, n| nulls(n)),
        udf("pg_get_indexdef", &[1, 3], DataType::Utf8, move |a, _| {
            by_oid(a, |o| {
                let d = table_by(&e1, o, index_oid)?;
                let name = crate::pg_catalog::rewrite::quote_ident(&d.name);
                Some(format!("CREATE UNIQUE INDEX {} ON public.{name} USING btree ({})", pkey_name(&d.name), key_list(&d)))
            })
        }),
        udf("pg_get_constraintdef", &[1, 2], DataType::Utf8, move |a, _| {
            by_oid(a, |o| table_by(&e2, o, constraint_oid).map(|d| format!("PRIMARY KEY ({})", key_list(&d))))
        }),
        udf("sluice_regclass_name", &[1], DataType::Utf8, move |a, _| {
            by_oid(a, |o| Some(table_by(&e3, o, rel_oid).map_or_else(|| o.to_string(), |d| d.name)))
        }),
        udf("sluice_regclass_oid", &[1], DataType::Int64, |a, _| {
            let names = texts(&a[0])?;
            Ok(Arc::new(names.iter().map(|s| s.map(|s| rel_oid(&regclass_name(s)))).collect::<Int64Array>()))
        }),
        udf("pg_encoding_to_char", &[1], DataType::Utf8, |a, _| {
            let enc = cast(&a[0], &DataType::Int32)?;
            let enc = enc.as_any().downcast_ref::<Int32Array>().expect("int32");
            Ok(Arc::new(enc.iter().map(|e| e.map(|e| if e == 6 { "UTF8" } else { "" })).collect::<StringArray>()))
        }),
        udf("current_database", &[0], DataType::Utf8, |_, n| Ok(Arc::new(StringArray::from(vec![DATABASE.0; n])))),
        udf("current_schema", &[0], DataType::Utf8, |_, n| Ok(Arc::new(StringArray::from(vec!["public"; n])))),
        udf("has_table_privilege", &[2, 3], DataType::Boolean, |_, n| Ok(Arc::new(BooleanArray::from(vec![true; n])))),
        udf("has_schema_privilege", &[2, 3], DataType::Boolean, |_, n| Ok(Arc::new(BooleanArray::from(vec![true; n])))),
        udf("has_any_column_privilege", &[2, 3], DataType::Boolean, |_, n| Ok(Arc::new(BooleanArray::from(vec![true; n])))),
        udf("has_column_privilege", &[3, 4], DataType::Boolean, |_, n| Ok(Arc::new(BooleanArray::from(vec![true; n])))),
        udf("has_database_privilege", &[2, 3], DataType::Boolean, |_, n| Ok(Arc::new(BooleanArray::from(vec![true; n])))),
    ]
}

/// The table a `'name'::regclass` names: `public.` and `pg_catalog.` prefixes dropped, an
/// unquoted name lower-cased, a double-quoted one kept as written.
fn regclass_name(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix("public.").unwrap_or(s);
    match s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => s.to_lowercase(),
    }
}
