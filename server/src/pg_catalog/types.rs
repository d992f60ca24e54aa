//! `pg_type` and the mapping of Sluice's column types to PostgreSQL's type OIDs and typmods,
//! and `format_type`'s spelling of them.

use datafusion::scalar::ScalarValue;
use sluice_catalog::table::ColumnDef;

use super::{b, i4, i8, t, Build, Snapshot, PG_CATALOG_OID, SLUICE_ROLE_OID};

/// OID of the default collation (`pg_collation.oid` of `default`), carried by text types.
pub const DEFAULT_COLLATION: i64 = 100;

/// The built-in types: OID, name, length (-1 varlena, -2 cstring), category, collatable.
const TYPES: &[(i64, &str, i32, &str, bool)] = &[
    (16, "bool", 1, "B", false),
    (17, "bytea", -1, "U", false),
    (18, "char", 1, "Z", false),
    (19, "name", 64, "S", true),
    (20, "int8", 8, "N", false),
    (21, "int2", 2, "N", false),
    (23, "int4", 4, "N", false),
    (25, "text", -1, "S", true),
    (26, "oid", 4, "N", false),
    (114, "json", -1, "U", false),
    (700, "float4", 4, "N", false),
    (701, "float8", 8, "N", false),
    (1042, "bpchar", -1, "S", true),
    (1043, "varchar", -1, "S", true),
    (1082, "date", 4, "D", false),
    (1083, "time", 8, "D", false),
    (1114, "timestamp", 8, "D", false),
    (1184, "timestamptz", 8, "D", false),
    (1186, "interval", 16, "T", false),
    (1700, "numeric", -1, "N", false),
    (2950, "uuid", 16, "U", false),
    (3802, "jsonb", -1, "U", false),
];

/// True for the types that carry a collation.
pub fn collatable(oid: i64) -> bool {
    TYPES.iter().any(|ty| ty.0 == oid && ty.4)
}

/// A column's PostgreSQL type OID and typmod, read from the type as the user wrote it
/// (`VARCHAR(20)` -> 1043 with typmod 24, `DECIMAL(10,2)` -> 1700 with typmod
/// `(10 << 16 | 2) + 4`, `TIMESTAMP(3)` -> 1114 with typmod 3, as PostgreSQL encodes them), and
/// from the Arrow type when the written name is not one PostgreSQL knows (`STRING` is `text`).
pub fn column_type(c: &ColumnDef) -> (i64, i32) {
    let sql = c.sql_type.trim().to_uppercase();
    let (name, args) = match sql.split_once('(') {
        Some((n, rest)) => {
            let (inside, after) = rest.split_once(')').unwrap_or((rest, ""));
            (format!("{} {}", n.trim(), after.trim()).trim().to_string(), inside.split(',').filter_map(|a| a.trim().parse::<i32>().ok()).collect::<Vec<_>>())
        }
        None => (sql.clone(), vec![]),
    };
    let len = |oid: i64| (oid, args.first().map_or(-1, |n| n + 4));
    match name.as_str() {
        "BOOLEAN" | "BOOL" => (16, -1),
        "TINYINT" | "SMALLINT" | "INT2" => (21, -1),
        "INT" | "INTEGER" | "INT4" => (23, -1),
        "BIGINT" | "INT8" => (20, -1),
        "FLOAT" | "REAL" | "FLOAT4" => (700, -1),
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" => (701, -1),
        "DECIMAL" | "NUMERIC" | "DEC" => match args.as_slice() {
            [p] => (1700, (p << 16) + 4),
            [p, s] => (1700, ((p << 16) | s) + 4),
            _ => (1700, -1),
        },
        "VARCHAR" | "CHARACTER VARYING" => len(1043),
        "CHAR" | "CHARACTER" | "BPCHAR" => len(1042),
        "STRING" | "TEXT" => (25, -1),
        "DATE" => (1082, -1),
        "TIME" => (1083, args.first().copied().unwrap_or(-1)),
        "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => (1114, args.first().copied().unwrap_or(-1)),
        "TIMESTAMPTZ" | "TIMESTAMP_LTZ" | "TIMESTAMP WITH TIME ZONE" | "TIMESTAMP WITH LOCAL TIME ZONE" => {
            (1184, args.first().copied().unwrap_or(-1))
        }
        "BYTES" | "BYTEA" | "BINARY" | "VARBINARY" => (17, -1),
        "JSON" => (114, -1),
        "JSONB" => (3802, -1),
        "UUID" => (2950, -1),
        "INTERVAL" => (1186, -1),
        _ => (arrow_type_oid(c), -1),
    }
}

/// The type OID of a column whose written type PostgreSQL has no name for, from its Arrow type.
fn arrow_type_oid(c: &ColumnDef) -> i64 {
    use arrow::datatypes::DataType as D;
    match c.arrow_type() {
        Ok(D::Boolean) => 16,
        Ok(D::Int8 | D::Int16 | D::UInt8) => 21,
        Ok(D::Int32 | D::UInt16) => 23,
        Ok(D::Int64 | D::UInt32 | D::UInt64) => 20,
        Ok(D::Float16 | D::Float32) => 700,
        Ok(D::Float64) => 701,
        Ok(D::Decimal128(..) | D::Decimal256(..)) => 1700,
        Ok(D::Date32 | D::Date64) => 1082,
        Ok(D::Timestamp(_, Some(_))) => 1184,
        Ok(D::Timestamp(_, None)) => 1114,
        Ok(D::Binary | D::LargeBinary | D::BinaryView) => 17,
        _ => 25,
    }
}

/// `format_type(oid, typmod)` as PostgreSQL spells it: `bigint`, `character varying(20)`,
/// `numeric(10,2)`, `timestamp(3) without time zone`; `???` for an unknown OID, NULL for NULL.
pub fn format_type(oid: i64, typmod: Option<i32>) -> String {
    let m = typmod.filter(|m| *m >= 0);
    let prec = |base: &str, suffix: &str| match m {
        Some(p) => format!("{base}({p}){suffix}"),
        None => format!("{base}{suffix}"),
    };
    match oid {
        16 => "boolean".into(),
        17 => "bytea".into(),
        18 => "\"char\"".into(),
        19 => "name".into(),
        20 => "bigint".into(),
        21 => "smallint".into(),
        23 => "integer".into(),
        25 => "text".into(),
        26 => "oid".into(),
        114 => "json".into(),
        700 => "real".into(),
        701 => "double precision".into(),
        1042 => match m {
            Some(n) => format!("character({})", n - 4),
            None => "bpchar".into(),
        },
        1043 => match m {
            Some(n) => format!("character varying({})", n - 4),
            None => "character varying".into(),
        },
        1082 => "date".into(),
        1083 => prec("time", " without time zone"),
        1114 => prec("timestamp", " without time zone"),
        1184 => prec("timestamp", " with time zone"),
        1186 => "interval".into(),
        1700 => match m {
            Some(n) => format!("numeric({},{})", (n - 4) >> 16, (n - 4) & 0xffff),
            None => "numeric".into(),
        },
        2950 => "uuid".into(),
        3802 => "jsonb".into(),
        _ => "???".into(),
    }
}

/// A type as the information schema describes it (`_pg_char_max_length`,
/// `_pg_numeric_precision` and the other helpers of PostgreSQL's `information_schema.sql`).
pub struct TypeInfo {
    /// The SQL name (`bigint`, `character varying`, `timestamp without time zone`).
    pub data_type: &'static str,
    /// The type's `pg_type.typname` (`int8`, `varchar`).
    pub udt_name: &'static str,
    /// `varchar(n)` and `char(n)`: n.
    pub char_max_len: Option<i32>,
    /// The largest size in bytes: 4 bytes a character in UTF8, 1 GB without a length.
    pub char_octet_len: Option<i32>,
    /// Bits of an integer or a float (radix 2), digits of a numeric (radix 10).
    pub numeric_precision: Option<i32>,
    /// 2 or 10, with `numeric_precision`.
    pub numeric_radix: Option<i32>,
    /// Digits after the point (0 for integers).
    pub numeric_scale: Option<i32>,
    /// Fractional digits of seconds for dates and times (6 when not given, 0 for `date`).
    pub datetime_precision: Option<i32>,
}

/// [`TypeInfo`] of type `oid` with typmod `typmod` (-1 for none).
pub fn type_info(oid: i64, typmod: i32) -> TypeInfo {
    let m = (typmod >= 0).then_some(typmod);
    let udt_name = TYPES.iter().find(|ty| ty.0 == oid).map_or("text", |ty| ty.1);
    let data_type = match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "\"char\"",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => "text",
    };
    let chars = matches!(oid, 1042 | 1043);
    let (precision, radix, scale) = match oid {
        21 => (Some(16), Some(2), Some(0)),
        23 => (Some(32), Some(2), Some(0)),
        20 => (Some(64), Some(2), Some(0)),
        700 => (Some(24), Some(2), None),
        701 => (Some(53), Some(2), None),
        1700 => (m.map(|m| ((m - 4) >> 16) & 0xffff), Some(10), m.map(|m| (m - 4) & 0xffff)),
        _ => (None, None, None),
    };
    TypeInfo {
        data_type,
        udt_name,
        char_max_len: if chars { m.map(|m| m - 4) } else { None },
        char_octet_len: match (oid, m) {
            (1042 | 1043, Some(m)) => Some((m - 4) * 4),
            (25 | 1042 | 1043, _) => Some(1_073_741_824),
            _ => None,
        },
        numeric_precision: precision,
        numeric_radix: radix,
        numeric_scale: scale,
        datetime_precision: match oid {
            1082 => Some(0),
            1083 | 1114 | 1184 | 1186 => Some(m.unwrap_or(6)),
            _ => None,
        },
    }
}

/// How PostgreSQL stores a value of the type (`pg_type.typstorage`): `p` plain for fixed-size
/// types, `m` main for numeric, `x` extended for the other variable-length ones.
pub fn storage(oid: i64) -> &'static str {
    match oid {
        1700 => "m",
        17 | 25 | 114 | 1042 | 1043 | 3802 => "x",
        _ => "p",
    }
}

/// The type catalogs: name, column spec, rows.
pub(super) fn tables() -> Vec<(&'static str, &'static str, Build)> {
    vec![(
        "pg_type",
        "oid:i8 typname:t typnamespace:i8 typowner:i8 typlen:i4 typbyval:b typtype:t typcategory:t typisdefined:b \
         typdelim:t typrelid:i8 typelem:i8 typarray:i8 typinput:t typoutput:t typnotnull:b typbasetype:i8 typtypmod:i4 \
         typndims:i4 typcollation:i8 typdefault:t",
        pg_type as Build,
    )]
}

fn pg_type(_: &Snapshot) -> Vec<Vec<ScalarValue>> {
    TYPES
        .iter()
        .map(|&(oid, name, len, cat, coll)| {
            vec![
                i8(oid), t(name), i8(PG_CATALOG_OID), i8(SLUICE_ROLE_OID), i4(len), b(len > 0 && len <= 8), t("b"), t(cat),
                b(true), t(","), i8(0), i8(0), i8(0), t(format!("{name}in")), t(format!("{name}out")), b(false), i8(0),
                i4(-1), i4(0), i8(if coll { DEFAULT_COLLATION } else { 0 }), super::null(),
            ]
        })
        .collect()
}

/// The OID of the type a name spells (`int4`, `integer`, `pg_catalog.varchar`, `character
/// varying`, `timestamptz`, ...), as `to_regtype` and `'name'::regtype` resolve it; None for a
/// name PostgreSQL's built-in types do not have.
pub fn type_oid(name: &str) -> Option<i64> {
    let lower = name.trim().to_lowercase();
    let n = lower.strip_prefix("pg_catalog.").unwrap_or(&lower).trim_matches('"');
    let n = n.split('(').next().unwrap_or(n).trim();
    if let Some(ty) = TYPES.iter().find(|ty| ty.1 == n) {
        return Some(ty.0);
    }
    Some(match n {
        "boolean" => 16,
        "bigint" => 20,
        "smallint" => 21,
        "int" | "integer" => 23,
        "real" => 700,
        "double precision" | "float" => 701,
        "character" => 1042,
        "character varying" => 1043,
        "time without time zone" => 1083,
        "timestamp without time zone" => 1114,
        "timestamp with time zone" => 1184,
        "decimal" => 1700,
        _ => return None,
    })
}
