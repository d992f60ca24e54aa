//! `SUBSCRIBE`, after Materialize's: a live result that first gives a table's or a query's
//! current contents and then every change, for as long as the client keeps it open.
//!
//! ```text
//! SUBSCRIBE [TO] name | (query) [WITH (SNAPSHOT = true | false, PROGRESS = false | true)] [LIMIT n]
//! ```
//!
//! `SNAPSHOT` and `PROGRESS` are Materialize's options (both spellings `true`/`'true'` are
//! accepted). `LIMIT n` is Sluice's: the subscription ends after `n` change rows, which lets a
//! client that waits for a complete result (psql) use a plain query; a `LIMIT` inside the
//! parenthesized query is the query's own.

use sqlparser::tokenizer::Token;

use crate::error::{PlanError, Result};
use crate::tokens::Cursor;

/// What a subscription watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeTarget {
    /// `SUBSCRIBE t`: the table's rows.
    Table(String),
    /// `SUBSCRIBE (SELECT ...)`: the query's text, as a persistent query would run it.
    Query(String),
}

/// A parsed `SUBSCRIBE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The table or query.
    pub target: SubscribeTarget,
    /// `SNAPSHOT`: start with the current contents (default true).
    pub snapshot: bool,
    /// `PROGRESS`: add a `progressed` column and a row with it set at each committed epoch
    /// (default false).
    pub progress: bool,
    /// `LIMIT n`: end after n change rows (progress rows not counted).
    pub limit: Option<u64>,
}

impl Subscribe {
    /// The query the subscription's dataflow runs.
    pub fn query_sql(&self) -> String {
        match &self.target {
            SubscribeTarget::Table(t) => format!("SELECT * FROM \"{}\"", t.replace('"', "\"\"")),
            SubscribeTarget::Query(q) => q.clone(),
        }
    }
}

/// Parses the rest of a `SUBSCRIBE` (the cursor is after the keyword).
///
/// Errors: [`PlanError::Syntax`] for anything else than the grammar above, an unknown option
/// or a value that is not a boolean.
pub fn parse_subscribe(c: &mut Cursor) -> Result<Subscribe> {
    c.eat_kw("TO");
    let target = if c.eat(&Token::LParen) {
        let mut toks = Vec::new();
        let mut depth = 0usize;
        loop {
            match c.peek() {
                Token::EOF => return Err(PlanError::Syntax("expected ')' closing the subscribed query".into())),
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::LParen => depth += 1,
                _ => {}
            }
            toks.push(c.next());
        }
        c.expect(&Token::RParen, "')' closing the subscribed query")?;
        let q = crate::tokens::join_tokens(&toks);
        if q.trim().is_empty() {
            return Err(PlanError::Syntax("SUBSCRIBE () needs a query".into()));
        }
        SubscribeTarget::Query(q)
    } else {
        SubscribeTarget::Table(c.object_name()?)
    };
    let mut s = Subscribe { target, snapshot: true, progress: false, limit: None };
    if c.eat_kw("WITH") {
        c.expect(&Token::LParen, "'(' after WITH")?;
        loop {
            let key = c.ident()?;
            let value = if c.eat(&Token::Eq) { Some(boolean(c)?) } else { None };
            match key.as_str() {
                "snapshot" => s.snapshot = value.unwrap_or(true),
                "progress" => s.progress = value.unwrap_or(true),
                other => {
                    return Err(PlanError::Syntax(format!(
                        "unknown SUBSCRIBE option \"{other}\" (SNAPSHOT and PROGRESS are known)"
                    )))
                }
            }
            if !c.eat(&Token::Comma) {
                break;
            }
        }
        c.expect(&Token::RParen, "')' closing WITH")?;
    }
    if c.eat_kw("LIMIT") {
        s.limit = Some(match c.next() {
            Token::Number(n, _) => n.parse().map_err(|_| PlanError::Syntax(format!("LIMIT {n} is not a row count")))?,
            other => return Err(PlanError::Syntax(format!("expected a row count after LIMIT, found {other}"))),
        });
    }
    Ok(s)
}

fn boolean(c: &mut Cursor) -> Result<bool> {
    let t = c.next();
    let text = match &t {
        Token::Word(w) => w.value.to_lowercase(),
        Token::SingleQuotedString(s) => s.to_lowercase(),
        other => return Err(PlanError::Syntax(format!("expected true or false, found {other}"))),
    };
    match text.as_str() {
        "true" | "on" => Ok(true),
        "false" | "off" => Ok(false),
        _ => Err(PlanError::Syntax(format!("expected true or false, found {t}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_statement, SluiceStatement};

    fn parse(sql: &str) -> Subscribe {
        match parse_statement(sql).unwrap() {
            SluiceStatement::Subscribe(s) => s,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn grammar() {
        assert_eq!(parse("SUBSCRIBE t"), Subscribe { target: SubscribeTarget::Table("t".into()), snapshot: true, progress: false, limit: None });
        assert_eq!(parse("subscribe to public.T;").target, SubscribeTarget::Table("t".into()));
        let s = parse("SUBSCRIBE (SELECT k, count(*) FROM t GROUP BY k) WITH (SNAPSHOT = false, PROGRESS) LIMIT 5");
        assert_eq!(s.target, SubscribeTarget::Query("SELECT k, count(*) FROM t GROUP BY k".into()));
        assert!(!s.snapshot && s.progress);
        assert_eq!(s.limit, Some(5));
        assert_eq!(parse("SUBSCRIBE t WITH (snapshot = 'false')").snapshot, false);
        for bad in ["SUBSCRIBE", "SUBSCRIBE ()", "SUBSCRIBE t WITH (colour = true)", "SUBSCRIBE t WITH (snapshot = 3)", "SUBSCRIBE t LIMIT x", "SUBSCRIBE t extra"] {
            assert!(matches!(parse_statement(bad), Err(PlanError::Syntax(_))), "{bad}");
        }
        assert_eq!(parse("SUBSCRIBE \"My Table\"").query_sql(), "SELECT * FROM \"My Table\"");
    }
}
