//! A small cursor over sqlparser's tokens, for the statements Sluice parses itself (Flink's
//! `CREATE TABLE` with watermarks and computed columns, `SHOW JOBS`, ...) and for rewriting
//! Flink's window table-valued functions before handing a query to sqlparser.

use sqlparser::dialect::GenericDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::error::Result;

/// Tokenizes `sql` with the dialect Sluice uses everywhere (generic: `"ident"` and `` `ident` ``).
pub fn tokenize(sql: &str) -> Result<Vec<Token>> {
    Ok(Tokenizer::new(&GenericDialect {}, sql).tokenize()?)
}

/// Renders tokens back to SQL text.
pub fn render(tokens: &[Token]) -> String {
    tokens.iter().map(|t| t.to_string()).collect()
}

/// Splits a script into statements at top-level semicolons; empty statements are dropped.
pub fn split_statements(sql: &str) -> Result<Vec<String>> {
    // One statement with no `;` but perhaps a last one, and no comments: its text as it is,
    // without tokenizing it (a large INSERT's tokens take many times its text).
    let text = sql.trim();
    let body = text.strip_suffix(';').unwrap_or(text).trim_end();
    if !body.contains(';') && !body.contains("--") && !body.contains("/*") {
        return Ok(if body.is_empty() { Vec::new() } else { vec![body.to_string()] });
    }
    let tokens = tokenize(sql)?;
    let mut out = Vec::new();
    let mut cur: Vec<Token> = Vec::new();
    let mut depth = 0i32;
    for t in tokens {
        match &t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                push_stmt(&mut out, &cur);
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(t);
    }
    push_stmt(&mut out, &cur);
    Ok(out)
}

fn push_stmt(out: &mut Vec<String>, toks: &[Token]) {
    if toks.iter().any(|t| !is_trivia(t)) {
        out.push(render(toks).trim().to_string());
    }
}

/// Whitespace and comments.
pub fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

/// True for a newline/space/comment token.
pub fn is_comment(t: &Token) -> bool {
    matches!(t, Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)))
}

/// A cursor over the non-whitespace tokens of a statement.
pub struct Cursor {
    toks: Vec<Token>,
    pos: usize,
}

impl Cursor {
    /// Builds a cursor over `sql`, dropping whitespace and comments.
    pub fn new(sql: &str) -> Result<Cursor> {
        let toks = tokenize(sql)?.into_iter().filter(|t| !is_trivia(t)).collect();
        Ok(Cursor { toks, pos: 0 })
    }

    /// The next token without consuming it.
    pub fn peek(&self) -> &Token {
        self.toks.get(self.pos).unwrap_or(&Token::EOF)
    }

    /// The token `n` ahead without consuming.
    pub fn peek_n(&self, n: usize) -> &Token {
        self.toks.get(self.pos + n).unwrap_or(&Token::EOF)
    }

    /// Consumes and returns the next token.
    pub fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    /// True when every token is consumed (a trailing semicolon is ignored).
    pub fn at_end(&self) -> bool {
        matches!(self.peek(), Token::EOF | Token::SemiColon)
    }

    /// True if the next token is the (unquoted) keyword `kw`, case-insensitively.
    pub fn peek_kw(&self, kw: &str) -> bool {
        is_kw(self.peek(), kw)
    }

    /// Consumes the keyword `kw` if it is next.
    pub fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes a sequence of keywords if all are next.
    pub fn eat_kws(&mut self, kws: &[&str]) -> bool {
        if kws.iter().enumerate().all(|(i, k)| is_kw(self.peek_n(i), k)) {
            self.pos += kws.len();
            true
        } else {
            false
        }
    }

    /// Consumes `t` if it is next.
    pub fn eat(&mut self, t: &Token) -> bool {
        if self.peek() == t {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Requires the token `t`.
    pub fn expect(&mut self, t: &Token, what: &str) -> Result<()> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(crate::PlanError::Syntax(format!("expected {what}, found {}", self.peek())))
        }
    }

    /// Reads an identifier: unquoted names are lower-cased (as PostgreSQL and DataFusion do),
    /// quoted ones (`"X"`, `` `X.Y` ``) keep their case and characters.
    pub fn ident(&mut self) -> Result<String> {
        match self.next() {
            Token::Word(w) => Ok(match w.quote_style {
                Some(_) => w.value,
                None => w.value.to_lowercase(),
            }),
            other => Err(crate::PlanError::Syntax(format!("expected an identifier, found {other}"))),
        }
    }

    /// Reads a possibly dotted name (`a.b.c`, `` `a.b` ``), returning the last part as the
    /// object name: Sluice has one catalog and one database.
    pub fn object_name(&mut self) -> Result<String> {
        let mut name = self.ident()?;
        while self.peek() == &Token::Period {
            self.next();
            name = self.ident()?;
        }
        Ok(name)
    }

    /// Reads a single-quoted string literal.
    pub fn string(&mut self) -> Result<String> {
        match self.next() {
            Token::SingleQuotedString(s) => Ok(s),
            other => Err(crate::PlanError::Syntax(format!("expected a quoted string, found {other}"))),
        }
    }

    /// Collects tokens up to (not including) a top-level `,` or `)` and returns them as text.
    pub fn until_list_end(&mut self) -> String {
        let start = self.pos;
        let mut depth = 0;
        while !matches!(self.peek(), Token::EOF) {
            match self.peek() {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::Comma if depth == 0 => break,
                _ => {}
            }
            self.pos += 1;
        }
        join_tokens(&self.toks[start..self.pos])
    }

    /// [`nesting`] of the cursor's tokens.
    pub fn nesting(&self) -> Nesting {
        nesting(&self.toks)
    }

    /// The remaining tokens as text.
    pub fn rest(&mut self) -> String {
        let s = join_tokens(&self.toks[self.pos..]);
        self.pos = self.toks.len();
        s
    }
}

/// Renders tokens (whitespace dropped) as SQL text: one space between tokens, none inside
/// parentheses' edges or before commas and periods (`TO_TIMESTAMP_LTZ(seq * 10, 3)`).
pub fn join_tokens(toks: &[Token]) -> String {
    let mut out = String::new();
    let mut prev: Option<&Token> = None;
    for t in toks {
        let tight = matches!(t, Token::Comma | Token::RParen | Token::Period)
            || matches!(prev, Some(Token::LParen | Token::Period) | None)
            || (matches!(t, Token::LParen) && matches!(prev, Some(Token::Word(_))));
        if !tight {
            out.push(' ');
        }
        out.push_str(&t.to_string());
        prev = Some(t);
    }
    out
}

/// How deeply a statement nests, measured on its tokens (see [`nesting`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nesting {
    /// An upper bound of the depth of the statement's syntax tree (and of the plan DataFusion
    /// makes of it): at every point, the open parentheses, brackets and `CASE`s plus, within
    /// each of them, the operators since the last comma.
    pub depth: usize,
    /// The most parentheses, brackets and `CASE ... END`s open at one point, plus the prefix
    /// operators (`NOT`, unary `-`) in a row there: what sqlparser and DataFusion recurse on.
    pub levels: usize,
    /// How many subqueries in expressions (`(SELECT ...)`, `IN (SELECT ...)`, `EXISTS (...)`)
    /// are open at most at one point; derived tables (`FROM (SELECT ...)`), CTE bodies and
    /// set-operation operands do not count.
    pub subqueries: usize,
    /// The most joins in one `FROM` clause: its commas and `JOIN`s.
    pub joins: usize,
}

/// Measures how deeply `toks` (without whitespace) nest, from the tokens alone, before
/// anything parses them.
///
/// For [`Nesting::depth`], a chain `1 + 1 + ... + 1` of n terms parses into a tree n deep, a
/// list `(1, 2, ..., n)` into a flat one, a 1 MB string literal is one token. Operators are the
/// symbol tokens (`+`, `||`, `=`, `::`, ...), the keywords that join two operands or queries
/// (`AND`, `OR`, `NOT`, `IS`, `IN`, `LIKE`, `BETWEEN`, `UNION`, `JOIN`, ...), and the commas of
/// a `FROM` list (each one a join). Unary minus and the `AND` of `BETWEEN` count too: the
/// bound only over-estimates.
pub fn nesting(toks: &[Token]) -> Nesting {
    use sqlparser::keywords::Keyword as K;
    /// One open parenthesis (or `CASE`): operators since its last comma, whether a `FROM` list
    /// is open in it, whether it opened a derived table (or CTE body, or set-operation operand)
    /// and whether it holds a subquery that counts.
    #[derive(Default)]
    struct Level {
        operators: usize,
        from: bool,
        derived: bool,
        subquery: bool,
        case: bool,
        joins: usize,
    }
    let kw = |t: Option<&Token>, kws: &[K]| matches!(t, Some(Token::Word(w)) if w.quote_style.is_none() && kws.contains(&w.keyword));
    // Tokens after which a `-` or `NOT` is binary (or part of `NOT IN`, `IS NOT`): operands.
    let operand = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => {
            w.quote_style.is_some() || matches!(w.keyword, K::NoKeyword | K::NULL | K::TRUE | K::FALSE | K::END)
        }
        Some(Token::RParen | Token::RBracket | Token::Number(..) | Token::SingleQuotedString(_) | Token::Placeholder(_)) => true,
        _ => false,
    };
    let table_start = [K::FROM, K::JOIN, K::AS, K::LATERAL, K::UNION, K::EXCEPT, K::INTERSECT, K::MINUS, K::ALL, K::DISTINCT];
    let mut levels: Vec<Level> = vec![Level::default()];
    let (mut operators, mut subqueries, mut prefixes) = (0usize, 0usize, 0usize);
    let mut max = Nesting { depth: 0, levels: 0, subqueries: 0, joins: 0 };
    let mut prev: Option<&Token> = None;
    for t in toks {
        let level = levels.len() - 1;
        let mut operator = false;
        let mut prefix = false;
        match t {
            Token::LParen | Token::LBracket | Token::LBrace => {
                let derived = prev.is_none()
                    || kw(prev, &table_start)
                    || (prev == Some(&Token::Comma) && levels[level].from)
                    || (prev == Some(&Token::LParen) && levels[level].derived);
                levels.push(Level { derived, ..Level::default() });
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                // Also closes a `CASE` left open inside the parenthesis.
                while levels.len() > 1 {
                    let l = levels.pop().unwrap_or_default();
                    operators -= l.operators;
                    subqueries -= l.subquery as usize;
                    if !l.case {
                        break;
                    }
                }
            }
            Token::Comma if levels[level].from => {
                operator = true;
                levels[level].joins += 1;
            }
            Token::Comma | Token::SemiColon => {
                operators -= std::mem::take(&mut levels[level].operators);
            }
            Token::Minus | Token::Plus | Token::Tilde | Token::ExclamationMark if !operand(prev) => {
                operator = true;
                prefix = true;
            }
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                K::SELECT => {
                    let l = &mut levels[level];
                    if level > 0 && !l.derived && !l.subquery {
                        l.subquery = true;
                        subqueries += 1;
                    }
                }
                K::CASE => levels.push(Level { case: true, ..Level::default() }),
                K::END if levels[level].case => {
                    let l = levels.pop().unwrap_or_default();
                    operators -= l.operators;
                }
                K::FROM => levels[level].from = true,
                K::WHERE | K::GROUP | K::HAVING | K::ORDER | K::LIMIT | K::OFFSET | K::FETCH | K::WINDOW | K::QUALIFY => {
                    levels[level].from = false
                }
                K::UNION | K::EXCEPT | K::INTERSECT | K::MINUS => {
                    levels[level].from = false;
                    levels[level].joins = 0;
                    operator = true;
                }
                K::JOIN | K::APPLY => {
                    operator = true;
                    levels[level].joins += 1;
                }
                K::NOT => {
                    operator = true;
                    prefix = !operand(prev);
                }
                K::AND
                | K::OR
                | K::XOR
                | K::IS
                | K::IN
                | K::LIKE
                | K::ILIKE
                | K::SIMILAR
                | K::RLIKE
                | K::REGEXP
                | K::BETWEEN
                | K::COLLATE
                | K::AT
                | K::DIV => operator = true,
                _ => {}
            },
            Token::Word(_)
            | Token::Whitespace(_)
            | Token::EOF
            | Token::Period
            | Token::Number(..)
            | Token::Char(_)
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => {}
            // Every other token is an operator symbol.
            _ => operator = true,
        }
        if operator {
            let level = levels.len() - 1;
            levels[level].operators += 1;
            operators += 1;
        }
        prefixes = if prefix { prefixes + 1 } else { 0 };
        max.depth = max.depth.max(operators + levels.len() - 1);
        max.levels = max.levels.max(levels.len() - 1 + prefixes);
        max.subqueries = max.subqueries.max(subqueries);
        max.joins = max.joins.max(levels[levels.len() - 1].joins);
        prev = Some(t);
    }
    max
}

/// True if `t` is the unquoted keyword `kw` (case-insensitive).
pub fn is_kw(t: &Token, kw: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(sql: &str) -> usize {
        Cursor::new(sql).unwrap().nesting().depth
    }

    fn subqueries(sql: &str) -> usize {
        Cursor::new(sql).unwrap().nesting().subqueries
    }

    fn levels(sql: &str) -> usize {
        Cursor::new(sql).unwrap().nesting().levels
    }

    #[test]
    fn levels_count_parentheses_case_and_prefix_operators() {
        assert_eq!(levels("SELECT a - -1, NOT b IS NOT NULL FROM t WHERE c NOT IN (1, 2)"), 1);
        assert_eq!(levels(&format!("SELECT {}true", "NOT ".repeat(50))), 50);
        assert_eq!(levels(&format!("SELECT {}1", "- ".repeat(50))), 50);
        let case = format!("SELECT {}1{}", "CASE WHEN x THEN ".repeat(40), " END".repeat(40));
        assert_eq!(levels(&case), 40);
        assert_eq!(levels("SELECT CASE WHEN a THEN (b) ELSE c END, (CASE x WHEN 1 THEN 2 END)"), 2);
        assert_eq!(levels(&format!("SELECT {}1{}", "abs(".repeat(30), ")".repeat(30))), 30);
    }

    #[test]
    fn subqueries_in_expressions_count_derived_tables_not() {
        assert_eq!(subqueries("SELECT (SELECT 1) + (SELECT 2)"), 1);
        let scalar = format!("SELECT {}1{}", "(SELECT ".repeat(20), ")".repeat(20));
        assert_eq!(subqueries(&scalar), 20);
        assert_eq!(subqueries("SELECT 1 WHERE 1 IN (SELECT 1 WHERE EXISTS (SELECT 1))"), 2);
        let derived = format!("SELECT * FROM {}(SELECT 1) t{}", "(SELECT * FROM ".repeat(30), ") t".repeat(30));
        assert_eq!(subqueries(&derived), 0);
        assert_eq!(subqueries("WITH a AS (SELECT 1) SELECT * FROM a, (SELECT 2) b JOIN ((SELECT 3)) c ON true"), 0);
        assert_eq!(subqueries("(SELECT 1) UNION ALL (SELECT 2)"), 0);
    }

    #[test]
    fn depth_counts_chains_and_nesting_not_lists() {
        assert_eq!(bound("SELECT 1"), 0);
        let sum = format!("SELECT 1{}", " + 1".repeat(2000));
        assert_eq!(bound(&sum), 2000);
        let parens = format!("SELECT {}1{}", "(".repeat(300), ")".repeat(300));
        assert_eq!(bound(&parens), 300);
        let list = format!("SELECT 1 IN ({})", vec!["1"; 10_000].join(", "));
        assert!(bound(&list) <= 2, "{}", bound(&list));
        let values = format!("INSERT INTO t VALUES {}", vec!["(-1, 'a' || 'b')"; 10_000].join(", "));
        assert!(bound(&values) <= 3, "{}", bound(&values));
        assert!(bound(&format!("SELECT '{}'", "x".repeat(1 << 20))) == 0);
        // A FROM list is a join tree; the select list before it and GROUP BY after are lists.
        let from = format!("SELECT a, b, c FROM {} WHERE x IN (1, 2) GROUP BY a, b", vec!["t"; 100].join(", "));
        assert_eq!(bound(&from), 99 + 1 + 1);
        let n = Cursor::new(&format!("{from} UNION SELECT 1 FROM a JOIN b ON true, c")).unwrap().nesting();
        assert_eq!(n.joins, 99);
        assert_eq!(Cursor::new("SELECT 1 FROM a JOIN b ON true, c LEFT JOIN d USING (x)").unwrap().nesting().joins, 3);
    }
}
