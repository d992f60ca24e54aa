//! Rewrites Flink's window table-valued functions into relational SQL that DataFusion plans.
//!
//! `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '2' HOUR))` becomes a derived table that adds
//! `window_start`, `window_end` and `window_time` to every row of `t` with
//! [`crate::functions::WINDOW_FN`]; `HOP(TABLE t, DESCRIPTOR(ts), slide, size)` becomes the
//! `UNION ALL` of the `ceil(size / slide)` windows each row belongs to. Windows are `[start, end)`
//! and aligned to the epoch, as in Flink. The same rewrite serves batch and streaming queries, so
//! a windowed query gives the same rows either way once the watermark has passed its windows.

use sqlparser::tokenizer::Token;

use crate::error::{PlanError, Result};
use crate::tokens::{is_kw, is_trivia, render, tokenize};

/// Rewrites every window TVF in `sql`; SQL without one is returned unchanged.
pub fn rewrite_window_tvfs(sql: &str) -> Result<String> {
    // Most statements name no window TVF: skip tokenizing them (a large INSERT's tokens take
    // many times its text).
    let names = sql.as_bytes();
    if !["TUMBLE", "HOP", "CUMULATE", "SESSION"]
        .iter()
        .any(|f| names.windows(f.len()).any(|w| w.eq_ignore_ascii_case(f.as_bytes())))
    {
        return Ok(sql.to_string());
    }
    let mut toks = tokenize(sql)?;
    let mut changed = false;
    while let Some((start, end, replacement)) = find_tvf(&toks)? {
        let new_toks = tokenize(&replacement)?;
        toks.splice(start..end, new_toks);
        changed = true;
    }
    Ok(if changed { render(&toks) } else { sql.to_string() })
}

fn next_sig(toks: &[Token], mut i: usize) -> Option<usize> {
    while i < toks.len() {
        if !is_trivia(&toks[i]) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn matching_paren(toks: &[Token], open: usize) -> Result<usize> {
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
    }
    Err(PlanError::Syntax("unbalanced parentheses".into()))
}

/// Finds `TABLE ( FN ( args ) )` and returns its token range and the replacement text.
fn find_tvf(toks: &[Token]) -> Result<Option<(usize, usize, String)>> {
    for i in 0..toks.len() {
        if !is_kw(&toks[i], "TABLE") {
            continue;
        }
        let Some(p1) = next_sig(toks, i + 1) else { continue };
        if toks[p1] != Token::LParen {
            continue;
        }
        let Some(f) = next_sig(toks, p1 + 1) else { continue };
        let func = match &toks[f] {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_uppercase(),
            _ => continue,
        };
        if !["TUMBLE", "HOP", "CUMULATE", "SESSION"].contains(&func.as_str()) {
            continue;
        }
        let Some(p2) = next_sig(toks, f + 1) else { continue };
        if toks[p2] != Token::LParen {
            continue;
        }
        let inner_end = matching_paren(toks, p2)?;
        let outer_end = matching_paren(toks, p1)?;
        let args = split_args(&toks[p2 + 1..inner_end]);
        let replacement = expand(&func, &args)?;
        return Ok(Some((i, outer_end + 1, replacement)));
    }
    Ok(None)
}

/// Splits the argument tokens at top-level commas, dropping whitespace and `name =>` prefixes.
fn split_args(toks: &[Token]) -> Vec<Vec<Token>> {
    let mut args = vec![Vec::new()];
    let mut depth = 0;
    for t in toks {
        match t {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => {
                args.push(Vec::new());
                continue;
            }
            _ => {}
        }
        if !is_trivia(t) {
            args.last_mut().unwrap().push(t.clone());
        }
    }
    for a in &mut args {
        if a.len() > 2 && matches!(a[1], Token::RArrow) {
            a.drain(..2);
        }
    }
    args
}

/// Parses `INTERVAL '2' HOUR` or `INTERVAL '2 hours'` into milliseconds.
pub fn interval_ms(toks: &[Token]) -> Result<i64> {
    let bad = || PlanError::Syntax(format!("expected an interval such as INTERVAL '2' HOUR, found {}", render_sp(toks)));
    if toks.is_empty() || !is_kw(&toks[0], "INTERVAL") {
        return Err(bad());
    }
    let (num, unit) = match (toks.get(1), toks.get(2)) {
        (Some(Token::SingleQuotedString(s)), Some(Token::Word(w))) => (s.trim().to_string(), w.value.clone()),
        (Some(Token::SingleQuotedString(s)), None) => {
            let mut parts = s.split_whitespace();
            let n = parts.next().ok_or_else(bad)?.to_string();
            (n, parts.next().ok_or_else(bad)?.to_string())
        }
        (Some(Token::Number(n, _)), Some(Token::Word(w))) => (n.clone(), w.value.clone()),
        _ => return Err(bad()),
    };
    let n: i64 = num.parse().map_err(|_| bad())?;
    let unit = unit.to_uppercase();
    let ms = match unit.trim_end_matches('S') {
        "MILLISECOND" => 1,
        "SECOND" => 1_000,
        "MINUTE" => 60_000,
        "HOUR" => 3_600_000,
        "DAY" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(n * ms)
}

fn render_sp(toks: &[Token]) -> String {
    toks.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ")
}

fn expand(func: &str, args: &[Vec<Token>]) -> Result<String> {
    let usage = |f: &str| {
        PlanError::Syntax(match f {
            "TUMBLE" => "TUMBLE takes (TABLE t, DESCRIPTOR(time_col), size)".into(),
            _ => "HOP takes (TABLE t, DESCRIPTOR(time_col), slide, size)".into(),
        })
    };
    if func == "CUMULATE" || func == "SESSION" {
        return Err(PlanError::Unsupported(format!("the {func} window TVF is not supported yet (TUMBLE and HOP are)")));
    }
    let want = if func == "TUMBLE" { 3 } else { 4 };
    if args.len() != want {
        if func == "TUMBLE" && args.len() == 4 {
            return Err(PlanError::Unsupported("TUMBLE with an offset is not supported yet".into()));
        }
        return Err(usage(func));
    }
    let table = &args[0];
    if table.is_empty() || !is_kw(&table[0], "TABLE") {
        return Err(usage(func));
    }
    let table = render_sp(&table[1..]);
    let d = &args[1];
    if d.len() != 4 || !is_kw(&d[0], "DESCRIPTOR") {
        return Err(usage(func));
    }
    let col = d[2].to_string();
    let (slide, size) = if func == "TUMBLE" {
        let s = interval_ms(&args[2])?;
        (s, s)
    } else {
        (interval_ms(&args[2])?, interval_ms(&args[3])?)
    };
    if slide <= 0 || size <= 0 {
        return Err(PlanError::InvalidParameter("window size and slide must be positive".into()));
    }
    let k_count = (size + slide - 1) / slide;
    let branch = |k: i64| {
        let w = |which: i64| format!("{}(__w.{col}, {slide}, {size}, {k}, {which})", crate::functions::WINDOW_FN);
        let filter = if size % slide != 0 { format!(" WHERE {} IS NOT NULL", w(0)) } else { String::new() };
        format!(
            "SELECT __w.*, {} AS window_start, {} AS window_end, {} AS window_time FROM {table} AS __w{filter}",
            w(0),
            w(1),
            w(2)
        )
    };
    let body = (0..k_count).map(branch).collect::<Vec<_>>().join(" UNION ALL ");
    Ok(format!("({body})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_tumble_and_hop() {
        let sql = "SELECT window_start, SUM(amount) FROM TABLE (\n TUMBLE(TABLE fd, DESCRIPTOR(ts), INTERVAL '2' HOUR )) GROUP BY window_start";
        let out = rewrite_window_tvfs(sql).unwrap();
        assert!(out.contains("sluice_window(__w.ts, 7200000, 7200000, 0, 1) AS window_end"), "{out}");
        assert!(out.contains("FROM fd AS __w"), "{out}");
        let hop = "SELECT * FROM TABLE(HOP(TABLE `a.b`, DESCRIPTOR(ts), INTERVAL '5' MINUTES, INTERVAL '10' MINUTES))";
        let out = rewrite_window_tvfs(hop).unwrap();
        assert_eq!(out.matches("UNION ALL").count(), 1, "{out}");
        assert!(out.contains("FROM `a.b` AS __w"), "{out}");
        assert!(rewrite_window_tvfs("SELECT 1").unwrap() == "SELECT 1");
        assert!(matches!(
            rewrite_window_tvfs("SELECT * FROM TABLE(SESSION(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE))"),
            Err(PlanError::Unsupported(_))
        ));
    }
}
