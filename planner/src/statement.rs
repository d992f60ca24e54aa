//! Statement classification: Sluice's own statements are parsed here, everything else by
//! sqlparser (generic dialect: `"quoted"` and `` `quoted` `` identifiers) after the window TVF
//! rewrite.
//!
//! Sluice's statements, with Flink SQL's syntax where Flink has one:
//! `CREATE TABLE` (see [`crate::ddl`]), `SHOW TABLES`, `SHOW JOBS`, `STOP JOB '<id>'`,
//! `DESCRIBE t` / `DESC t`, `SHOW CREATE TABLE t`, `DROP TABLE [IF EXISTS] t`, `EXPLAIN <stmt>`,
//! and RisingWave's `FLUSH`.

use sqlparser::ast::Statement;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::ddl::{parse_create_table, CreateTable};
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
    /// `FLUSH`: wait until every persistent query has processed all input written before it.
    Flush,
    /// `DROP TABLE [IF EXISTS] t`.
    DropTable {
        /// The table.
        name: String,
        /// `IF EXISTS` was given.
        if_exists: bool,
    },
    /// `EXPLAIN <statement>`: the inner statement's text.
    Explain(String),
    /// Any other statement, parsed by sqlparser (window TVFs already rewritten).
    Sql(Box<Statement>),
}

/// Parses one statement.
///
/// Errors: [`PlanError::Syntax`] (42601) when the text is not a statement Sluice knows.
pub fn parse_statement(sql: &str) -> Result<SluiceStatement> {
    let mut c = Cursor::new(sql)?;
    if c.eat_kws(&["CREATE", "TABLE"]) {
        return Ok(SluiceStatement::CreateTable(parse_create_table(&mut c, sql)?));
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
    if c.eat_kw("FLUSH") {
        return end(&c, SluiceStatement::Flush);
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
    let rewritten = rewrite_window_tvfs(sql)?;
    let mut stmts = Parser::parse_sql(&GenericDialect {}, &rewritten)?;
    match stmts.len() {
        1 => Ok(SluiceStatement::Sql(Box::new(stmts.remove(0)))),
        0 => Err(PlanError::Syntax("empty statement".into())),
        _ => Err(PlanError::Syntax("one statement at a time".into())),
    }
}

fn end(c: &Cursor, s: SluiceStatement) -> Result<SluiceStatement> {
    if c.at_end() {
        Ok(s)
    } else {
        Err(PlanError::Syntax(format!("unexpected {} at the end of the statement", c.peek())))
    }
}
