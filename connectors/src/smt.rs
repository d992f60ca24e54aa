//! Kafka Connect's single message transforms (SMTs), with their names and options, applied to
//! the rows a source connector captures, before they reach a topic: a masked field never does.
//!
//! `'transforms' = 'a,b'` lists them in order; `'transforms.a.type'` names the class, and
//! `'transforms.a.<option>'` configures it. Supported classes:
//!
//! - `org.apache.kafka.connect.transforms.MaskField$Value`: `fields` (comma-separated),
//!   optional `replacement`. Without a replacement a field becomes its type's empty value, as
//!   Kafka Connect does: 0 for numbers, `false`, the empty string, the epoch for times.
//! - `org.apache.kafka.connect.transforms.ReplaceField$Value`: `include` (or the old `whitelist`),
//!   `exclude` (or `blacklist`), `renames` (`old:new,...`).
//! - `io.debezium.transforms.ExtractNewRecordState` (unwrap): a table already holds the new
//!   record state; `delete.handling.mode` = `drop` (default) removes deletes, `rewrite` turns a
//!   delete into a row with `__deleted` = `true` (and `false` on other rows), `none` keeps them.
//!   `drop.tombstones` and `add.fields` are accepted; Sluice topics have no tombstones.
//! - `org.apache.kafka.connect.transforms.ValueToKey`: `fields` become the key (the table's
//!   primary key).
//! - `org.apache.kafka.connect.transforms.RegexRouter`: `regex`, `replacement` (`$1` groups) rename
//!   the topic when the whole name matches.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use regex::Regex;
use sluice_catalog::{ChangeBatch, Op};

use crate::error::{ConnectorError, Result};
use crate::options::OptionReader;

/// One transform, parsed.
#[derive(Debug, Clone)]
pub enum Transform {
    /// `MaskField$Value`.
    MaskField {
        /// Fields to mask.
        fields: Vec<String>,
        /// `replacement`, cast to each field's type.
        replacement: Option<String>,
    },
    /// `ReplaceField$Value`.
    ReplaceField {
        /// Only these fields are kept (when given).
        include: Option<Vec<String>>,
        /// These fields are dropped.
        exclude: Vec<String>,
        /// (old, new) names.
        renames: Vec<(String, String)>,
    },
    /// `ExtractNewRecordState`.
    ExtractNewRecordState {
        /// `delete.handling.mode`: `drop`, `rewrite` or `none`.
        delete_mode: String,
    },
    /// `ValueToKey`.
    ValueToKey {
        /// The key fields.
        fields: Vec<String>,
    },
    /// `RegexRouter`.
    RegexRouter {
        /// The pattern, anchored to the whole topic name.
        regex: Regex,
        /// The replacement, with `$1`-style groups.
        replacement: String,
    },
}

/// A captured table's shape: the topic (table) name, its columns and its key.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Topic name, `<prefix>.<schema>.<table>` before routing.
    pub name: String,
    /// Columns.
    pub schema: SchemaRef,
    /// Key columns (the primary key).
    pub key: Vec<String>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// Parses `transforms` and each `transforms.<name>.*` option.
///
/// Errors: [`ConnectorError::InvalidOption`] for an unknown class, a missing or unknown option.
pub fn parse_transforms(r: &mut OptionReader<'_>) -> Result<Vec<Transform>> {
    let Some(names) = r.get("transforms") else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for name in list(names) {
        let mut opts = r.prefixed(&format!("transforms.{name}."));
        let class = opts.remove("type").ok_or_else(|| {
            ConnectorError::InvalidOption(format!("option 'transforms.{name}.type' is required"))
        })?;
        let mut take = |k: &str| opts.remove(k);
        let t = match class.as_str() {
            "org.apache.kafka.connect.transforms.MaskField$Value" => Transform::MaskField {
                fields: list(&take("fields").ok_or_else(|| missing(&name, "fields"))?),
                replacement: take("replacement"),
            },
            "org.apache.kafka.connect.transforms.ReplaceField$Value" => {
                let include = take("include").or_else(|| take("whitelist")).map(|s| list(&s));
                let exclude = take("exclude").or_else(|| take("blacklist")).map(|s| list(&s)).unwrap_or_default();
                let renames = match take("renames") {
                    None => Vec::new(),
                    Some(s) => list(&s)
                        .into_iter()
                        .map(|p| {
                            p.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| {
                                ConnectorError::InvalidOption(format!(
                                    "option 'transforms.{name}.renames' wants old:new pairs, got '{p}'"
                                ))
                            })
                        })
                        .collect::<Result<_>>()?,
                };
                Transform::ReplaceField { include, exclude, renames }
            }
            "io.debezium.transforms.ExtractNewRecordState" => {
                let delete_mode = take("delete.handling.mode")
                    .or_else(|| take("delete.tombstone.handling.mode").map(|m| match m.as_str() {
                        "rewrite" => "rewrite".to_string(),
                        "tombstone" | "drop" => "drop".to_string(),
                        other => other.to_string(),
                    }))
                    .unwrap_or_else(|| "drop".to_string());
                if !["drop", "rewrite", "none"].contains(&delete_mode.as_str()) {
                    return Err(ConnectorError::InvalidOption(format!(
                        "option 'transforms.{name}.delete.handling.mode' must be drop, rewrite or none, got '{delete_mode}'"
                    )));
                }
                let _ = take("drop.tombstones");
                let _ = take("add.fields");
                let _ = take("add.headers");
                Transform::ExtractNewRecordState { delete_mode }
            }
            "org.apache.kafka.connect.transforms.ValueToKey" => {
                Transform::ValueToKey { fields: list(&take("fields").ok_or_else(|| missing(&name, "fields"))?) }
            }
            "org.apache.kafka.connect.transforms.RegexRouter" => {
                let pattern = take("regex").ok_or_else(|| missing(&name, "regex"))?;
                let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                    ConnectorError::InvalidOption(format!("option 'transforms.{name}.regex': {e}"))
                })?;
                Transform::RegexRouter { regex, replacement: take("replacement").ok_or_else(|| missing(&name, "replacement"))? }
            }
            other => {
                return Err(ConnectorError::InvalidOption(format!(
                    "transform class '{other}' is not supported (supported: MaskField$Value, ReplaceField$Value, ExtractNewRecordState, ValueToKey, RegexRouter)"
                )))
            }
        };
        if let Some(k) = opts.keys().next() {
            return Err(ConnectorError::InvalidOption(format!("unknown option 'transforms.{name}.{k}' for {class}")));
        }
        out.push(t);
    }
    Ok(out)
}

fn missing(name: &str, key: &str) -> ConnectorError {
    ConnectorError::InvalidOption(format!("option 'transforms.{name}.{key}' is required"))
}

/// Checks, over every captured table at once, the fields the transforms name: as Kafka
/// Connect's MaskField, a field is masked in the records that have it and the others pass
/// through, so a connector capturing several tables may name a field only some of them have;
/// only a field that no captured table has (as it reaches the transform) is refused, being a
/// typo. `sources` are the tables' shapes before the transforms.
///
/// Errors: [`ConnectorError::InvalidOption`] for such a field, or from [`Transform::shape`].
pub fn check_fields(transforms: &[Transform], sources: &[Shape]) -> Result<()> {
    // The column names each transform sees, over all tables.
    let mut seen: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); transforms.len()];
    for source in sources {
        let mut shape = source.clone();
        for (i, t) in transforms.iter().enumerate() {
            seen[i].extend(shape.schema.fields().iter().map(|f| f.name().clone()));
            shape = t.shape(shape)?;
        }
    }
    for (t, seen) in transforms.iter().zip(&seen) {
        if let Transform::MaskField { fields, .. } = t {
            if let Some(f) = fields.iter().find(|f| !seen.contains(f.as_str())) {
                let tables: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
                return Err(ConnectorError::InvalidOption(format!(
                    "MaskField: field '{f}' is not a column of any captured table ({})",
                    tables.join(", ")
                )));
            }
        }
    }
    Ok(())
}

impl Transform {
    /// The name a column `field` has after this transform, `None` when it drops the column
    /// (ReplaceField's `include` / `exclude`).
    pub fn output_name(&self, field: &str) -> Option<String> {
        match self {
            Transform::ReplaceField { include, exclude, renames } => {
                let keep = include.as_ref().is_none_or(|i| i.iter().any(|x| x == field)) && !exclude.iter().any(|x| x == field);
                keep.then(|| renames.iter().find(|(a, _)| a == field).map(|(_, b)| b.clone()).unwrap_or_else(|| field.to_string()))
            }
            _ => Some(field.to_string()),
        }
    }

    /// The shape after this transform. A MaskField field the table lacks is passed over, as
    /// Kafka Connect does (see [`check_fields`] for the check over all captured tables).
    ///
    /// Errors: a ValueToKey field that is not a column.
    pub fn shape(&self, s: Shape) -> Result<Shape> {
        let has = |f: &str| s.schema.index_of(f).is_ok();
        let check = |fields: &[String], what: &str| -> Result<()> {
            match fields.iter().find(|f| !has(f)) {
                Some(f) => Err(ConnectorError::InvalidOption(format!("{what}: field '{f}' is not a column of {}", s.name))),
                None => Ok(()),
            }
        };
        Ok(match self {
            Transform::MaskField { .. } => s,
            Transform::ReplaceField { .. } => {
                let fields: Vec<Field> = s
                    .schema
                    .fields()
                    .iter()
                    .filter_map(|f| self.output_name(f.name()).map(|n| f.as_ref().clone().with_name(n)))
                    .collect();
                let key = s.key.iter().filter_map(|k| self.output_name(k)).collect();
                Shape { name: s.name, schema: Arc::new(Schema::new(fields)), key }
            }
            Transform::ExtractNewRecordState { delete_mode } => {
                if delete_mode == "rewrite" {
                    let mut fields: Vec<Field> = s.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                    fields.push(Field::new("__deleted", DataType::Utf8, true));
                    Shape { schema: Arc::new(Schema::new(fields)), ..s }
                } else {
                    s
                }
            }
            Transform::ValueToKey { fields } => {
                check(fields, "ValueToKey")?;
                let schema = Arc::new(Schema::new(
                    s.schema
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone().with_nullable(f.is_nullable() && !fields.contains(f.name())))
                        .collect::<Vec<_>>(),
                ));
                Shape { key: fields.clone(), schema, ..s }
            }
            Transform::RegexRouter { regex, replacement } => {
                let name = if regex.is_match(&s.name) {
                    regex.replace(&s.name, replacement.as_str()).into_owned()
                } else {
                    s.name
                };
                Shape { name, ..s }
            }
        })
    }

    /// Applies the transform to captured rows (`input` has the shape before it, and the result the
    /// shape after it, `output`).
    ///
    /// Errors: a replacement that does not cast to a masked field's type.
    pub fn apply(&self, batch: ChangeBatch, output: &SchemaRef) -> Result<ChangeBatch> {
        Ok(match self {
            Transform::MaskField { fields, replacement } => {
                let n = batch.num_rows();
                let cols: Vec<ArrayRef> = batch
                    .data
                    .schema()
                    .fields()
                    .iter()
                    .zip(batch.data.columns())
                    .map(|(f, c)| {
                        if fields.contains(f.name()) {
                            masked(f.data_type(), replacement.as_deref(), n, c)
                        } else {
                            Ok(c.clone())
                        }
                    })
                    .collect::<Result<_>>()?;
                ChangeBatch::new(RecordBatch::try_new(output.clone(), cols)?, batch.ops)
            }
            Transform::ReplaceField { .. } | Transform::ValueToKey { .. } => {
                // Columns are kept or dropped by name; renames keep positions.
                let input = batch.data.schema();
                let cols: Vec<ArrayRef> = output
                    .fields()
                    .iter()
                    .map(|f| {
                        let i = input.index_of(f.name()).or_else(|_| {
                            // A renamed column: the same position among the kept ones.
                            let pos = output.index_of(f.name()).unwrap_or(0);
                            renamed_source(self, &input, pos)
                        })?;
                        Ok(batch.data.column(i).clone())
                    })
                    .collect::<Result<_>>()?;
                ChangeBatch::new(RecordBatch::try_new(output.clone(), cols)?, batch.ops)
            }
            Transform::ExtractNewRecordState { delete_mode } => match delete_mode.as_str() {
                "drop" => {
                    let mask: BooleanArray = batch.ops.iter().map(|o| Some(*o != Op::Delete)).collect();
                    batch.filter(&mask)?
                }
                "rewrite" => {
                    let deleted: StringArray =
                        batch.ops.iter().map(|o| Some(if *o == Op::Delete { "true" } else { "false" })).collect();
                    let mut cols = batch.data.columns().to_vec();
                    cols.push(Arc::new(deleted));
                    let ops = batch.ops.iter().map(|o| if *o == Op::Delete { Op::UpdateAfter } else { *o }).collect();
                    ChangeBatch::new(RecordBatch::try_new(output.clone(), cols)?, ops)
                }
                _ => batch,
            },
            Transform::RegexRouter { .. } => batch,
        })
    }
}

/// For ReplaceField: the input index of the `pos`-th output column.
fn renamed_source(t: &Transform, input: &SchemaRef, pos: usize) -> Result<usize> {
    let Transform::ReplaceField { include, exclude, .. } = t else {
        return Err(ConnectorError::InvalidOption("column mapping".into()));
    };
    let kept: Vec<usize> = (0..input.fields().len())
        .filter(|i| {
            let f = input.field(*i).name();
            include.as_ref().is_none_or(|inc| inc.iter().any(|x| x == f)) && !exclude.iter().any(|x| x == f)
        })
        .collect();
    kept.get(pos).copied().ok_or_else(|| ConnectorError::InvalidOption("ReplaceField: column mapping".into()))
}

/// A masked column: `replacement` cast to the type, else the type's empty value; NULLs stay NULL.
fn masked(dt: &DataType, replacement: Option<&str>, n: usize, original: &ArrayRef) -> Result<ArrayRef> {
    let text = match replacement {
        Some(r) => r.to_string(),
        None => match dt {
            DataType::Utf8 | DataType::LargeUtf8 => String::new(),
            DataType::Boolean => "false".into(),
            DataType::Timestamp(..) => "1970-01-01T00:00:00".into(),
            DataType::Date32 | DataType::Date64 => "1970-01-01".into(),
            DataType::Binary | DataType::LargeBinary => String::new(),
            _ => "0".into(),
        },
    };
    let one = StringArray::from(vec![text.as_str(); n]);
    let cast = arrow::compute::cast_with_options(&one, dt, &arrow::compute::CastOptions { safe: false, ..Default::default() })
        .map_err(|e| ConnectorError::InvalidOption(format!("MaskField replacement '{text}' for a {dt} field: {e}")))?;
    if original.null_count() == 0 {
        return Ok(cast);
    }
    let keep: BooleanArray = (0..n).map(|i| Some(!original.is_null(i))).collect();
    let nulls = new_null_array(dt, n);
    Ok(arrow::compute::kernels::zip::zip(&keep, &cast, &nulls)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Vec<Transform> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut r = OptionReader::new(&map, "test");
        let t = parse_transforms(&mut r).unwrap();
        r.finish().unwrap();
        t
    }

    #[test]
    fn mask_replace_route_and_key() {
        let ts = parse(&[
            ("transforms", "mask,drop,route,key"),
            ("transforms.mask.type", "org.apache.kafka.connect.transforms.MaskField$Value"),
            ("transforms.mask.fields", "email"),
            ("transforms.drop.type", "org.apache.kafka.connect.transforms.ReplaceField$Value"),
            ("transforms.drop.exclude", "secret"),
            ("transforms.drop.renames", "name:full_name"),
            ("transforms.route.type", "org.apache.kafka.connect.transforms.RegexRouter"),
            ("transforms.route.regex", "pg\\.public\\.(.*)"),
            ("transforms.route.replacement", "ORCL.ADMIN.$1"),
            ("transforms.key.type", "org.apache.kafka.connect.transforms.ValueToKey"),
            ("transforms.key.fields", "id"),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("email", DataType::Utf8, true),
            Field::new("secret", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec![Some("a@x.io"), None])),
                Arc::new(StringArray::from(vec!["s1", "s2"])),
            ],
        )
        .unwrap();
        let mut shape = Shape { name: "pg.public.customers".into(), schema, key: vec![] };
        let mut rows = ChangeBatch::inserts(batch);
        for t in &ts {
            let next = t.shape(shape.clone()).unwrap();
            rows = t.apply(rows, &next.schema).unwrap();
            shape = next;
        }
        assert_eq!(shape.name, "ORCL.ADMIN.customers");
        assert_eq!(shape.key, vec!["id".to_string()]);
        assert_eq!(shape.schema.field(1).name(), "full_name");
        assert_eq!(rows.to_text(), "+I 1 a \n+I 2 b NULL\n");
    }

    #[test]
    fn mask_field_passes_over_tables_without_the_field() {
        let ts = parse(&[
            ("transforms", "mask"),
            ("transforms.mask.type", "org.apache.kafka.connect.transforms.MaskField$Value"),
            ("transforms.mask.fields", "email"),
        ]);
        let customers = Shape {
            name: "pg.public.customers".into(),
            schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("email", DataType::Utf8, true)])),
            key: vec!["id".into()],
        };
        let items = Shape {
            name: "pg.public.order_items".into(),
            schema: Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("sku", DataType::Utf8, true)])),
            key: vec!["id".into()],
        };
        check_fields(&ts, &[customers.clone(), items.clone()]).unwrap();
        let out = ts[0].shape(items.clone()).unwrap();
        let batch = RecordBatch::try_new(
            items.schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![1])), Arc::new(StringArray::from(vec!["a-1"]))],
        )
        .unwrap();
        assert_eq!(ts[0].apply(ChangeBatch::inserts(batch), &out.schema).unwrap().to_text(), "+I 1 a-1\n");
        let batch = RecordBatch::try_new(
            customers.schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![1])), Arc::new(StringArray::from(vec!["a@x.io"]))],
        )
        .unwrap();
        assert_eq!(ts[0].apply(ChangeBatch::inserts(batch), &customers.schema).unwrap().to_text(), "+I 1 \n");
        // A field no captured table has is a typo.
        let err = check_fields(&ts, &[items]).unwrap_err();
        assert!(matches!(&err, ConnectorError::InvalidOption(m) if m.contains("'email'") && m.contains("order_items")), "{err}");
    }

    #[test]
    fn unknown_class_and_option_are_refused() {
        let map: BTreeMap<String, String> = [("transforms", "x"), ("transforms.x.type", "com.example.Nope")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(parse_transforms(&mut OptionReader::new(&map, "t")).is_err());
        let map: BTreeMap<String, String> = [
            ("transforms", "m"),
            ("transforms.m.type", "org.apache.kafka.connect.transforms.MaskField$Value"),
            ("transforms.m.fields", "a"),
            ("transforms.m.bogus", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(parse_transforms(&mut OptionReader::new(&map, "t")).is_err());
    }
}
