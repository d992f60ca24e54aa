//! Statement classification: Sluice's own statements are parsed here, everything else by
//! sqlparser (generic dialect: `"quoted"` and `` `quoted` `` identifiers) after the window TVF
//! rewrite.
//!
//! Sluice's statements, with Flink SQL's syntax where Flink has one:
//! `CREATE TABLE` (see [`crate::ddl`]), `SHOW TABLES`, `SHOW JOBS`, `STOP JOB '<id>'`,
//! `RESUME JOB '<id>' [WITH ('key' = 'value', ...)]`, the SQL client's `SET 'key' = 'value'` and
//! `RESET ['key']`, `DESCRIBE t` / `DESC t`, `SHOW CREATE TABLE t`, `DROP TABLE [IF EXISTS] t`, `EXPLAIN <stmt>`,
//! RisingWave's `FLUSH`, Materialize's `SUBSCRIBE` (see [`crate::subscribe`]); for connectors, ksqlDB's `CREATE SOURCE CONNECTOR` / `CREATE SINK
//! CONNECTOR [IF NOT EXISTS] name WITH (...)`, `SHOW CONNECTORS` (or `LIST CONNECTORS`),
//! `DESCRIBE CONNECTOR name` and `DROP CONNECTOR [IF EXISTS] name`.

use std::collections::BTreeMap;

use sqlparser::ast::Statement;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::ddl::{parse_create_table, parse_with_options, CreateTable};
use crate::error::{PlanError, Result};
use crate::rewrite::rewrite_window_tvfs;
use crate::tokens::Cursor;

/// A classified statement.
#[derive(Debug, Clone)]
pub enum SluiceStatement {
    /// `CREATE TABLE`.
    CreateTable(CreateTable),
    /// `SHOW TABLES`.
    ShowTables,
    /// `SHOW JOBS`: persistent queries with state and counters.
    ShowJobs,
    /// `SHOW CREATE TABLE t`.
    ShowCreateTable(String),
    /// `DESCRIBE t`.
    Describe(String),
    /// `STOP JOB '<id>'`.
    StopJob(String),
    /// `RESUME JOB '<id>' [WITH (...)]`: restarts a failed or stopped job from its last
    /// complete checkpoint, with the options given changed for good.
    ResumeJob {
        /// The job id.
        id: String,
        /// The `WITH (...)` options (keys lower-cased); empty without `WITH`.
        options: BTreeMap<String, String>,
    },
    /// `SET 'key' = 'value'`, Flink SQL client's session option (a `SET` without quotes, as
    /// PostgreSQL drivers send it, is [`SluiceStatement::Sql`]).
    SetOption {
        /// The key, lower-cased.
        key: String,
        /// The value.
        value: String,
    },
    /// `RESET 'key'`, or `RESET` for every session option (Flink SQL client).
    ResetOption(Option<String>),
    /// `FLUSH`: wait until every persistent query has processed all input written before it.
    Flush,
    /// `DROP TABLE [IF EXISTS] t`.
    DropTable {
        /// The table.
        name: String,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
    /// `CREATE SOURCE|SINK CONNECTOR [IF NOT EXISTS] name WITH (...)`.
    CreateConnector {
        /// True for `SOURCE`, false for `SINK`.
        source: bool,
        /// Connector name.
        name: String,
        /// `IF NOT EXISTS` was given.
        if_not_exists: bool,
        /// The options (keys lower-cased).
        options: BTreeMap<String, String>,
    },
    /// `SHOW CONNECTORS` / `LIST CONNECTORS`.
    ShowConnectors,
    /// `DESCRIBE CONNECTOR name`.
    DescribeConnector(String),
    /// `DROP CONNECTOR [IF EXISTS] name`.
    DropConnector {
        /// Connector name.
        name: String,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
    /// `EXPLAIN <statement>`: the inner statement's text.
    Explain(String),
    /// `SUBSCRIBE ...` (see [`crate::subscribe`]).
    Subscribe(crate::subscribe::Subscribe),
    /// Any other statement, parsed by sqlparser (window TVFs already rewritten).
    Sql(Box<Statement>),
}

/// The largest [`crate::tokens::Nesting::levels`] of a statement Sluice parses: parentheses,
/// brackets, `CASE`s and prefix operators nested within each other. sqlparser and DataFusion
/// recurse once or twice per level, and DataFusion's time grows quickly with it (nested
/// function calls 150 deep plan in a third of a second).
pub const MAX_NESTING_LEVELS: usize = 100;

/// How deep sqlparser may recurse (its default is 50). It spends at most a few levels per
/// [`MAX_NESTING_LEVELS`] level, so the token check refuses a statement first: sqlparser does
/// not always report reaching its limit, sometimes it parses a keyword as a name instead.
pub const PARSER_RECURSION_LIMIT: usize = 4 * MAX_NESTING_LEVELS + 16;

/// The largest [`crate::tokens::Nesting::depth`] of a statement Sluice parses. sqlparser builds
/// left-deep trees for operator chains (`1 + 1 + ... + 1`, `a OR b OR ...`, `UNION` chains)
/// without recursing, and DataFusion then walks the tree recursively, in time quadratic in its
/// depth (a sum of 3 000 terms takes ten seconds); this bound keeps those walks within the
/// daemon's thread stacks.
pub const MAX_EXPRESSION_DEPTH: usize = 3_000;

/// The largest [`crate::tokens::Nesting::subqueries`] of a statement Sluice parses:
/// DataFusion's planning time doubles with every level of subqueries nested in expressions (20
/// levels take seconds, 25 minutes).
pub const MAX_SUBQUERY_DEPTH: usize = 16;

/// The largest [`crate::tokens::Nesting::joins`] of a statement Sluice parses: DataFusion's
/// planning time grows with the cube of the tables joined in one `FROM` (150 plan in a third of
/// a second, 1 000 in most of a minute).
pub const MAX_JOINS: usize = 200;

/// Parses one statement.
///
/// Errors: [`PlanError::Syntax`] (42601) when the text is not a statement Sluice knows;
/// [`PlanError::TooComplex`] (54001) when it nests deeper than [`MAX_NESTING_LEVELS`],
/// [`MAX_EXPRESSION_DEPTH`], [`MAX_SUBQUERY_DEPTH`], [`MAX_JOINS`] or [`PARSER_RECURSION_LIMIT`].
pub fn parse_statement(sql: &str) -> Result<SluiceStatement> {
    let mut c = Cursor::new(sql)?;
    let nesting = c.nesting();
    if nesting.levels > MAX_NESTING_LEVELS {
        return Err(PlanError::TooComplex(format!(
            "its parentheses, CASEs and prefix operators nest {} levels deep; the limit is {MAX_NESTING_LEVELS}",
            nesting.levels
        )));
    }
    if nesting.depth > MAX_EXPRESSION_DEPTH {
        return Err(PlanError::TooComplex(format!(
            "its expressions nest up to {} operators and parentheses deep; the limit is {MAX_EXPRESSION_DEPTH}",
            nesting.depth
        )));
    }
    if nesting.subqueries > MAX_SUBQUERY_DEPTH {
        return Err(PlanError::TooComplex(format!(
            "it nests {} subqueries in expressions; the limit is {MAX_SUBQUERY_DEPTH}",
            nesting.subqueries
        )));
    }
    if nesting.joins > MAX_JOINS {
        return Err(PlanError::TooComplex(format!(
            "it joins {} tables in one FROM clause; the limit is {MAX_JOINS}",
            nesting.joins + 1
        )));
    }
    if c.eat_kws(&["CREATE", "TABLE"]) {
        return Ok(SluiceStatement::CreateTable(parse_create_table(&mut c, sql)?));
    }
    for (kw, source) in [("SOURCE", true), ("SINK", false)] {
        if c.eat_kws(&["CREATE", kw, "CONNECTOR"]) {
            let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
            let name = c.object_name()?;
            if !c.eat_kw("WITH") {
                return Err(PlanError::Syntax("CREATE CONNECTOR needs WITH ('key' = 'value', ...)".into()));
            }
            let options = parse_with_options(&mut c)?;
            return end(&c, SluiceStatement::CreateConnector { source, name, if_not_exists, options });
        }
    }
    if c.eat_kws(&["SHOW", "CONNECTORS"]) || c.eat_kws(&["LIST", "CONNECTORS"]) {
        return end(&c, SluiceStatement::ShowConnectors);
    }
    if c.eat_kws(&["DESCRIBE", "CONNECTOR"]) {
        let name = c.object_name()?;
        return end(&c, SluiceStatement::DescribeConnector(name));
    }
    if c.eat_kws(&["DROP", "CONNECTOR"]) {
        let if_exists = c.eat_kws(&["IF", "EXISTS"]);
        let name = c.object_name()?;
        return end(&c, SluiceStatement::DropConnector { name, if_exists });
    }
    if c.eat_kws(&["SHOW", "TABLES"]) {
        return end(&c, SluiceStatement::ShowTables);
    }
    if c.eat_kws(&["SHOW", "JOBS"]) {
        return end(&c, SluiceStatement::ShowJobs);
    }
    if c.eat_kws(&["SHOW", "CREATE", "TABLE"]) {
        let name = c.object_name()?;
        return end(&c, SluiceStatement::ShowCreateTable(name));
    }
    if c.eat_kw("DESCRIBE") || c.eat_kw("DESC") {
        c.eat_kw("TABLE");
        let name = c.object_name()?;
        return end(&c, SluiceStatement::Describe(name));
    }
    if c.eat_kws(&["STOP", "JOB"]) {
        let id = c.string()?;
        return end(&c, SluiceStatement::StopJob(id));
    }
    if c.eat_kws(&["RESUME", "JOB"]) {
        let id = c.string()?;
        let options = if c.eat_kw("WITH") { parse_with_options(&mut c)? } else { BTreeMap::new() };
        return end(&c, SluiceStatement::ResumeJob { id, options });
    }
    if let Some((key, value)) = unquoted_flink_set(&c) {
        return Ok(SluiceStatement::SetOption { key, value });
    }
    if c.peek_kw("SET") && matches!(c.peek_n(1), Token::SingleQuotedString(_)) {
        c.next();
        let key = c.string()?.to_lowercase();
        c.expect(&Token::Eq, "'=' after the option's key")?;
        let value = c.string()?;
        return end(&c, SluiceStatement::SetOption { key, value });
    }
    if c.peek_kw("RESET") && matches!(c.peek_n(1), Token::SingleQuotedString(_) | Token::EOF | Token::SemiColon) {
        c.next();
        let key = if c.at_end() { None } else { Some(c.string()?.to_lowercase()) };
        return end(&c, SluiceStatement::ResetOption(key));
    }
    if c.eat_kw("FLUSH") {
        return end(&c, SluiceStatement::Flush);
    }
    if c.eat_kw("SUBSCRIBE") {
        let s = crate::subscribe::parse_subscribe(&mut c)?;
        return end(&c, SluiceStatement::Subscribe(s));
    }
    if c.eat_kws(&["DROP", "TABLE"]) {
        let if_exists = c.eat_kws(&["IF", "EXISTS"]);
        let name = c.object_name()?;
        return end(&c, SluiceStatement::DropTable { name, if_exists });
    }
    if c.eat_kw("EXPLAIN") {
        let idx = sql.to_uppercase().find("EXPLAIN").unwrap_or(0) + "EXPLAIN".len();
        let inner = sql[idx..].trim();
        if inner.is_empty() {
            return Err(PlanError::Syntax("EXPLAIN needs a statement".into()));
        }
        return Ok(SluiceStatement::Explain(inner.to_string()));
    }
    // The cursor's tokens are not needed any more: free them before sqlparser tokenizes again.
    drop(c);
    let rewritten = rewrite_window_tvfs(sql)?;
    let mut stmts = Parser::new(&GenericDialect {})
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(&rewritten)?
        .parse_statements()?;
    match stmts.len() {
        1 => Ok(SluiceStatement::Sql(Box::new(stmts.remove(0)))),
        0 => Err(PlanError::Syntax("empty statement".into())),
        _ => Err(PlanError::Syntax("one statement at a time".into())),
    }
}

/// The first part of the keys of Flink's configuration (and Sluice's own), which the Flink SQL
/// client also takes unquoted: `SET table.exec.state.ttl = 1 h`.
const FLINK_KEY_NAMESPACES: &[&str] = &[
    "table", "execution", "sql-client", "pipeline", "parallelism", "state", "restart-strategy", "taskmanager", "jobmanager", "python", "sluice",
];

/// Flink SQL client's `SET key = value` without quotes (`SET table.exec.state.ttl = 1 h`,
/// `SET 'key' = value`), for keys in [`FLINK_KEY_NAMESPACES`]: the key (lower-cased) and the
/// value. Other unquoted `SET`s are PostgreSQL's (`SET search_path = public`, a custom
/// `myapp.user = 'x'`) and go to sqlparser.
fn unquoted_flink_set(c: &Cursor) -> Option<(String, String)> {
    if !c.peek_kw("SET") {
        return None;
    }
    let mut key = String::new();
    let mut i = 1;
    loop {
        match c.peek_n(i) {
            Token::Word(w) if w.quote_style.is_none() => key.push_str(&w.value),
            Token::SingleQuotedString(s) if i == 1 => key.push_str(s),
            Token::Period => key.push('.'),
            Token::Minus => key.push('-'),
            Token::Number(n, _) => key.push_str(n),
            Token::Eq => break,
            _ => return None,
        }
        i += 1;
    }
    let key = key.to_lowercase();
    let first = key.split('.').next().unwrap_or("");
    if !key.contains('.') || !FLINK_KEY_NAMESPACES.contains(&first) {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    let mut j = i + 1;
    loop {
        match c.peek_n(j) {
            Token::EOF | Token::SemiColon => break,
            Token::SingleQuotedString(s) => parts.push(s.clone()),
            Token::Word(w) => parts.push(w.value.clone()),
            Token::Number(n, _) => parts.push(n.clone()),
            Token::Period => parts.push(".".into()),
            Token::Minus => parts.push("-".into()),
            _ => return None,
        }
        j += 1;
    }
    if parts.is_empty() || matches!(c.peek_n(j), Token::SemiColon) && !matches!(c.peek_n(j + 1), Token::EOF) {
        return None;
    }
    // `1 h` keeps its space; `a.b` and `x-y` do not get any.
    let mut value = String::new();
    for p in parts {
        let glue = !value.is_empty() && p != "." && p != "-" && !value.ends_with('.') && !value.ends_with('-');
        if glue {
            value.push(' ');
        }
        value.push_str(&p);
    }
    Some((key, value))
}

fn end(c: &Cursor, s: SluiceStatement) -> Result<SluiceStatement> {
    if c.at_end() {
        Ok(s)
    } else {
        Err(PlanError::Syntax(format!("unexpected {} at the end of the statement", c.peek())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_options_and_resume_with_options() {
        let SluiceStatement::SetOption { key, value } = parse_statement("SET 'Table.Exec.Sink.Not-Null-Enforcer' = 'DROP';").unwrap() else {
            panic!("not a SetOption")
        };
        assert_eq!((key.as_str(), value.as_str()), ("table.exec.sink.not-null-enforcer", "DROP"));
        // PostgreSQL's SET, as drivers send it, still goes to sqlparser.
        assert!(matches!(parse_statement("SET extra_float_digits = 3").unwrap(), SluiceStatement::Sql(_)));
        assert!(matches!(parse_statement("RESET").unwrap(), SluiceStatement::ResetOption(None)));
        assert!(matches!(parse_statement("RESET 'a.b'").unwrap(), SluiceStatement::ResetOption(Some(k)) if k == "a.b"));
        let SluiceStatement::ResumeJob { id, options } =
            parse_statement("RESUME JOB 'abc' WITH ('table.exec.sink.not-null-enforcer' = 'LOG')").unwrap()
        else {
            panic!("not a ResumeJob")
        };
        assert_eq!(id, "abc");
        assert_eq!(options.get("table.exec.sink.not-null-enforcer").map(String::as_str), Some("LOG"));
        assert!(matches!(parse_statement("RESUME JOB 'abc'").unwrap(), SluiceStatement::ResumeJob { options, .. } if options.is_empty()));
        assert!(matches!(parse_statement("SET 'a' 'b'"), Err(PlanError::Syntax(_))));
        // Flink's SQL client also takes keys and values unquoted.
        for (sql, k, v) in [
            ("SET table.exec.state.ttl = 1 h", "table.exec.state.ttl", "1 h"),
            ("SET table.exec.sink.not-null-enforcer=DROP;", "table.exec.sink.not-null-enforcer", "DROP"),
            ("SET 'sql-client.execution.result-mode' = tableau", "sql-client.execution.result-mode", "tableau"),
            ("SET execution.runtime-mode = 'streaming'", "execution.runtime-mode", "streaming"),
        ] {
            let SluiceStatement::SetOption { key, value } = parse_statement(sql).unwrap() else { panic!("{sql}: not a SetOption") };
            assert_eq!((key.as_str(), value.as_str()), (k, v), "{sql}");
        }
        assert!(matches!(parse_statement("SET myapp.user_id = 'x'").unwrap(), SluiceStatement::Sql(_)));
        assert!(matches!(parse_statement("SET search_path = public").unwrap(), SluiceStatement::Sql(_)));
    }
}
