//! Validation of manifest rows before any SQL derived from them reaches PostgreSQL.
//!
//! Every manifest names a target table (`schema.name`) and a query. Both come
//! from a table that people edit by hand, so both are checked here before the
//! seeder builds `CREATE MATERIALIZED VIEW <name> AS <query>` from them:
//!
//! * [`ViewName::parse`] accepts exactly `schema.name`, where each part is a
//!   plain unquoted PostgreSQL identifier, and folds both parts to lower case
//!   the way PostgreSQL folds unquoted identifiers.
//! * [`validate_query`] accepts exactly one read-only query (`SELECT`,
//!   `VALUES`, `WITH … SELECT`, set operations, `TABLE x`) and returns the
//!   text to embed.
//! * [`referenced_relations`] lists the relations such a query reads, without
//!   its CTE names and table functions.
//!
//! A failure is an [`InvalidManifest`] whose message names the rule that
//! failed and what to fix; the caller records it and moves on to the next
//! manifest.
//!
//! The query checks are syntactic. They keep statements that are not queries,
//! `SELECT … INTO`, data-modifying `WITH` clauses and locking clauses out of
//! the database. They cannot tell whether a function the query calls has side
//! effects. The database role the seeder runs as stays the real limit on what
//! a query can do.

use std::convert::Infallible;
use std::fmt;
use std::ops::ControlFlow;
use std::str::FromStr;

use sqlparser::ast::{
    Ident, ObjectNamePart, Query, Select, SetExpr, Statement, TableFactor, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, Tokenizer, Whitespace, Word};

/// PostgreSQL's `NAMEDATALEN - 1`: longer identifiers are silently truncated
/// by the server, which would make two different manifests collide.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// How much of a rejected table name is repeated in an error message.
const MAX_ECHOED_CHARS: usize = 100;

/// Which half of a `schema.name` table name a problem was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NamePart {
    /// The part before the dot.
    Schema,
    /// The part after the dot.
    Name,
}

impl fmt::Display for NamePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NamePart::Schema => "schema",
            NamePart::Name => "name",
        })
    }
}

/// Why a manifest was rejected before any of its SQL was run.
///
/// Table names are repeated in messages with `{:?}` escaping, so whitespace
/// and invisible characters show up. Names longer than 100 characters are
/// cut short and end in `…`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidManifest {
    /// The table name is the empty string.
    #[error("invalid table name: it is empty; expected schema.name, e.g. reporting.daily_sales")]
    EmptyTableName,

    /// The table name does not consist of exactly two dot-separated parts.
    #[error(
        "invalid table name {table:?}: expected schema.name with exactly one dot, \
         found {parts} part(s)"
    )]
    WrongPartCount {
        /// The rejected table name (possibly shortened).
        table: String,
        /// How many dot-separated parts it has.
        parts: usize,
    },

    /// One side of the dot is empty (`.x`, `x.`).
    #[error("invalid table name {table:?}: the {part} part is empty; expected schema.name")]
    EmptyPart {
        /// The rejected table name (possibly shortened).
        table: String,
        /// The empty part.
        part: NamePart,
    },

    /// One part is longer than PostgreSQL keeps identifiers.
    #[error(
        "invalid table name {table:?}: the {part} part is {bytes} bytes long, \
         but PostgreSQL identifiers are limited to {MAX_IDENTIFIER_BYTES} bytes; shorten it"
    )]
    PartTooLong {
        /// The rejected table name (possibly shortened).
        table: String,
        /// The part that is too long.
        part: NamePart,
        /// Its length in bytes.
        bytes: usize,
    },

    /// One part starts with a character that may only follow the first one
    /// (a digit or `$`).
    #[error(
        "invalid table name {table:?}: the {part} part starts with {character:?}; \
         an identifier must start with a letter or an underscore"
    )]
    InvalidStart {
        /// The rejected table name (possibly shortened).
        table: String,
        /// The part with the bad first character.
        part: NamePart,
        /// The first character.
        character: char,
    },

    /// One part contains a character that cannot appear in an unquoted
    /// identifier (whitespace, quotes, punctuation, invisible characters).
    #[error(
        "invalid table name {table:?}: the {part} part contains invalid character \
         {character:?} (U+{code:04X}); use only letters, digits, underscores and $ (and \
         visible characters of other scripts), without whitespace, quotes, ASCII punctuation \
         or invisible characters",
        code = u32::from(*.character)
    )]
    InvalidCharacter {
        /// The rejected table name (possibly shortened).
        table: String,
        /// The part with the bad character.
        part: NamePart,
        /// The first bad character.
        character: char,
    },

    /// The name is of the form the tool gives its own temporary views, which crash recovery
    /// drops.
    #[error(
        "invalid table name {table:?}: names starting with _rs_ are the tool's own temporary \
         views (a rebuild builds under one, recovery drops them); choose another name"
    )]
    ReservedName {
        /// The rejected table name (possibly shortened).
        table: String,
    },

    /// The query has no statement: empty, blank, or only comments and
    /// semicolons.
    #[error(
        "invalid query: it is empty or contains only whitespace, comments and semicolons; \
         provide one SELECT query"
    )]
    EmptyQuery,

    /// sqlparser could not parse the query (PostgreSQL dialect).
    #[error("invalid query: {message}; fix the SQL syntax")]
    Unparsable {
        /// sqlparser's error message.
        message: String,
    },

    /// The text holds more than one statement.
    #[error(
        "invalid query: expected exactly one statement but it has {count} statements; \
         keep only the query that defines the view"
    )]
    MultipleStatements {
        /// The number of statements found.
        count: usize,
    },

    /// The statement is not a query (e.g. `INSERT`, `DROP`, `COPY`, `SET`).
    #[error(
        "invalid query: expected a read-only query (SELECT, VALUES, WITH … SELECT or TABLE) \
         but the statement is {kind}; a materialized view can only be defined by a query"
    )]
    NotAQuery {
        /// What the statement is instead, e.g. `INSERT` or `CREATE TABLE`.
        kind: String,
    },

    /// A `SELECT … INTO`, which creates a table, appears somewhere in the
    /// query.
    #[error(
        "invalid query: SELECT … INTO creates a table; remove the INTO clause \
         (the seeder creates the materialized view itself)"
    )]
    SelectInto,

    /// An `INSERT`/`UPDATE`/`DELETE`/`MERGE` appears inside the query,
    /// typically as a data-modifying `WITH` clause.
    #[error(
        "invalid query: it contains a data-modifying {kind} (e.g. in a WITH clause); \
         the query must only read data"
    )]
    DataModifying {
        /// The kind of nested statement, e.g. `INSERT`.
        kind: String,
    },

    /// A locking clause (`FOR UPDATE`, `FOR SHARE`) appears somewhere in the
    /// query.
    #[error(
        "invalid query: locking clause {clause} is not allowed in a materialized view; \
         remove it"
    )]
    LockingClause {
        /// The clause as sqlparser renders it, e.g. `FOR UPDATE`.
        clause: String,
    },

    /// Removing trailing semicolons and comments would have changed the
    /// statement. This is a safety net and should never happen.
    #[error(
        "invalid query: trailing semicolons and comments could not be removed safely; \
         remove them from the query"
    )]
    UnsafeTrailingText,
}

/// A validated `schema.name`, both parts folded to lower case the way
/// PostgreSQL folds unquoted identifiers.
///
/// Each part starts with a letter or an underscore and contains only letters,
/// digits, underscores and `$`, at most 63 bytes. So writing the parts
/// unquoted, or double-quoted as they are stored (ASCII letters in lower case,
/// as PostgreSQL folds them in UTF-8), names the same relation. Quoting also
/// protects the names that are reserved keywords (`select`, `table`, …): those
/// pass validation but are rejected by PostgreSQL when they are left unquoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewName {
    schema: String,
    name: String,
}

impl ViewName {
    /// Validates `raw` as `schema.name` and folds it to lower case.
    ///
    /// Nothing is trimmed: surrounding or embedded whitespace of any kind is
    /// rejected, as are quotes, semicolons and other punctuation. Letters of
    /// any script are taken, as PostgreSQL takes them; only ASCII letters fold
    /// to lower case.
    pub fn parse(raw: &str) -> Result<ViewName, InvalidManifest> {
        if raw.is_empty() {
            return Err(InvalidManifest::EmptyTableName);
        }
        let parts: Vec<&str> = raw.split('.').collect();
        let [schema, name] = parts.as_slice() else {
            return Err(InvalidManifest::WrongPartCount {
                table: echo(raw),
                parts: parts.len(),
            });
        };
        check_identifier(raw, NamePart::Schema, schema)?;
        check_identifier(raw, NamePart::Name, name)?;
        if name.to_ascii_lowercase().starts_with("_rs_") {
            return Err(InvalidManifest::ReservedName { table: echo(raw) });
        }
        Ok(ViewName {
            schema: schema.to_ascii_lowercase(),
            name: name.to_ascii_lowercase(),
        })
    }

    /// The schema part, lower case.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The relation name part, lower case.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ViewName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl FromStr for ViewName {
    type Err = InvalidManifest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ViewName::parse(s)
    }
}

/// Checks one side of `schema.name` against the rules for unquoted
/// PostgreSQL identifiers.
fn check_identifier(raw: &str, part: NamePart, ident: &str) -> Result<(), InvalidManifest> {
    let mut chars = ident.chars();
    let Some(first) = chars.next() else {
        return Err(InvalidManifest::EmptyPart {
            table: echo(raw),
            part,
        });
    };
    if !(first.is_ascii_alphabetic() || first == '_' || visible_non_ascii(first)) {
        return Err(if first.is_ascii_digit() || first == '$' {
            InvalidManifest::InvalidStart {
                table: echo(raw),
                part,
                character: first,
            }
        } else {
            InvalidManifest::InvalidCharacter {
                table: echo(raw),
                part,
                character: first,
            }
        });
    }
    if let Some(bad) = chars.find(|&c| !identifier_char(c)) {
        return Err(InvalidManifest::InvalidCharacter {
            table: echo(raw),
            part,
            character: bad,
        });
    }
    // PostgreSQL's limit is in bytes: `é` counts two.
    if ident.len() > MAX_IDENTIFIER_BYTES {
        return Err(InvalidManifest::PartTooLong {
            table: echo(raw),
            part,
            bytes: ident.len(),
        });
    }
    Ok(())
}

/// What PostgreSQL's lexer takes in an unquoted identifier after its first character: ASCII
/// letters, digits, `_` and `$`, and (like PostgreSQL, which takes any non-ASCII byte) visible
/// characters of other scripts, so `reporting.ventes_été` names what it named for the tool this
/// one replaces. Non-ASCII spaces and invisible characters (a no-break space or a zero-width
/// space pasted with a name) are refused: PostgreSQL would take them into the name.
fn identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || visible_non_ascii(c)
}

/// A non-ASCII character PostgreSQL takes into an unquoted identifier (it takes every non-ASCII
/// byte) that shows when the name is read: letters and digits of any script, and the combining
/// marks scripts such as Devanagari or Thai write words with (`नमस्ते`, a decomposed `café`).
/// Refused: spaces, control characters, and the invisible ones (zero-width spaces and joiners,
/// direction marks, soft hyphens, fillers, variation selectors, byte-order marks, tags).
fn visible_non_ascii(c: char) -> bool {
    !c.is_ascii()
        && !c.is_whitespace()
        && !c.is_control()
        && !matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202F}'
                | '\u{205F}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// The rejected input as repeated in an error message, cut short so that a
/// huge value cannot flood the log or the error record.
fn echo(raw: &str) -> String {
    let mut chars = raw.char_indices();
    match chars.nth(MAX_ECHOED_CHARS) {
        None => raw.to_owned(),
        Some((cut, _)) => format!("{}…", &raw[..cut]),
    }
}

/// Validates a manifest query and returns the text to execute.
///
/// The query must parse with sqlparser's PostgreSQL dialect as exactly one
/// statement. That statement must be a query (`Statement::Query`: `SELECT`,
/// `VALUES`, `WITH … SELECT`, set operations, `TABLE x`) with no
/// `SELECT … INTO`, no `INSERT`/`UPDATE`/`DELETE`/`MERGE` (data-modifying
/// `WITH` clauses) and no `FOR UPDATE`/`FOR SHARE` at any depth.
///
/// The returned text is a slice of the original, never sqlparser's
/// re-rendering. It starts at the first character that is not whitespace, so
/// a leading comment is kept. It ends right after the last token of the
/// statement. Trailing whitespace, semicolons and comments are all dropped,
/// including comments between the statement and its semicolon and after it.
/// This is done by cutting at the token, not by appending a newline. So the
/// text never ends inside a `--` comment that would swallow whatever follows.
/// `SELECT 1; -- done` gives `SELECT 1`, which can safely be embedded as
/// `CREATE MATERIALIZED VIEW x AS <returned>`. To be safe, the caller should
/// put a space or newline before anything it appends (such as `WITH NO DATA`).
pub fn validate_query(sql: &str) -> Result<String, InvalidManifest> {
    validated_query(sql).map(|(text, _)| text.to_owned())
}

/// [`validate_query`] and [`referenced_relations`] from one parse: the text to
/// execute and the relations it reads.
pub fn validate_query_and_reads(sql: &str) -> Result<(String, Vec<RelationRef>), InvalidManifest> {
    let (text, query) = validated_query(sql)?;
    Ok((text.to_owned(), relations_of(&query)))
}

/// A query the tool's parser cannot parse may still be PostgreSQL: syntax sqlparser lacks, such
/// as `BETWEEN SYMMETRIC`, `ROWS FROM (…)`, `x ISNULL` or `xmlelement(name …)`. Such a query is
/// accepted when its tokens show one statement (no `;` but leading or trailing ones) that
/// starts as a query does, with no locking clause; PostgreSQL's own `CREATE MATERIALIZED VIEW`
/// refuses the rest (a data-modifying `WITH`, `SELECT … INTO`) before running anything. Returns
/// the text to execute and the relations it seems to read: names right after `FROM` or `JOIN`
/// outside function calls (`substring(x FROM 1)` is not a relation), which may include a CTE's
/// name; the catalog confirms them once the view exists.
pub fn unparsed_postgres(sql: &str) -> Result<(String, Vec<RelationRef>), InvalidManifest> {
    let text = strip_trailing(sql)?;
    let dialect = PostgreSqlDialect {};
    let tokens =
        Tokenizer::new(&dialect, text)
            .tokenize()
            .map_err(|e| InvalidManifest::Unparsable {
                message: format!("sql parser error: {e}"),
            })?;
    let words: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let separators = words
        .iter()
        .filter(|t| matches!(t, Token::SemiColon))
        .count();
    if separators > 0 {
        return Err(InvalidManifest::MultipleStatements {
            count: separators + 1,
        });
    }
    let keyword = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.keyword == k);
    match words.first() {
        Some(t)
            if [
                Keyword::SELECT,
                Keyword::WITH,
                Keyword::VALUES,
                Keyword::TABLE,
            ]
            .iter()
            .any(|k| keyword(t, *k)) => {}
        Some(Token::LParen) => {}
        Some(Token::Word(w)) => {
            return Err(InvalidManifest::NotAQuery {
                kind: w.value.to_uppercase(),
            })
        }
        _ => {
            return Err(InvalidManifest::NotAQuery {
                kind: "not a statement".into(),
            })
        }
    }
    // Each open parenthesis: whether it is a function call's (its arguments may hold FROM and
    // FOR, as in substring(x FROM 1 FOR 2)) rather than a subquery's or a grouping's.
    const OPENS_A_QUERY: &[Keyword] = &[
        Keyword::FROM,
        Keyword::JOIN,
        Keyword::IN,
        Keyword::EXISTS,
        Keyword::AS,
        Keyword::LATERAL,
        Keyword::ANY,
        Keyword::ALL,
        Keyword::SOME,
        Keyword::ON,
        Keyword::WHERE,
        Keyword::AND,
        Keyword::OR,
        Keyword::NOT,
        Keyword::SELECT,
        Keyword::UNION,
        Keyword::INTERSECT,
        Keyword::EXCEPT,
        Keyword::THEN,
        Keyword::ELSE,
        Keyword::WHEN,
        Keyword::HAVING,
        Keyword::USING,
    ];
    // Words after FROM or JOIN that are not a relation's name.
    const NOT_A_NAME: &[Keyword] = &[
        Keyword::LATERAL,
        Keyword::ONLY,
        Keyword::ROWS,
        Keyword::VALUES,
    ];
    let mut calls: Vec<bool> = Vec::new();
    let mut reads: Vec<RelationRef> = Vec::new();
    for (i, t) in words.iter().enumerate() {
        let in_call = calls.last().copied().unwrap_or(false);
        match t {
            Token::LParen => {
                let call = match i.checked_sub(1).map(|p| words[p]) {
                    Some(Token::Word(w)) => {
                        w.quote_style.is_some() || !OPENS_A_QUERY.contains(&w.keyword)
                    }
                    _ => false,
                };
                calls.push(call);
            }
            Token::RParen => {
                calls.pop();
            }
            _ if in_call => {}
            _ if keyword(t, Keyword::FOR) => {
                let next = |k: usize| words.get(i + k).copied();
                let is = |k: usize, kw: Keyword| next(k).is_some_and(|t| keyword(t, kw));
                let locking = is(1, Keyword::UPDATE)
                    || is(1, Keyword::SHARE)
                    || (is(1, Keyword::NO) && is(2, Keyword::KEY) && is(3, Keyword::UPDATE))
                    || (is(1, Keyword::KEY) && is(2, Keyword::SHARE));
                if locking {
                    let clause = words[i..]
                        .iter()
                        .take_while(|t| matches!(t, Token::Word(_)))
                        .take(if is(1, Keyword::NO) {
                            4
                        } else if is(1, Keyword::KEY) {
                            3
                        } else {
                            2
                        })
                        .map(|t| t.to_string().to_uppercase())
                        .collect::<Vec<_>>()
                        .join(" ");
                    return Err(InvalidManifest::LockingClause { clause });
                }
            }
            // `a IS DISTINCT FROM b` compares values: b is no relation.
            _ if (keyword(t, Keyword::FROM)
                && !(i > 0 && keyword(words[i - 1], Keyword::DISTINCT)))
                || keyword(t, Keyword::JOIN) =>
            {
                let name = |k: usize| match words.get(i + k) {
                    Some(Token::Word(w))
                        if w.quote_style.is_some()
                            || !(OPENS_A_QUERY.contains(&w.keyword)
                                || NOT_A_NAME.contains(&w.keyword)) =>
                    {
                        Some(fold_word(w))
                    }
                    _ => None,
                };
                let at = if words.get(i + 1).is_some_and(|t| keyword(t, Keyword::ONLY)) {
                    2
                } else {
                    1
                };
                let Some(first) = name(at) else { continue };
                let (r, end) = match (words.get(i + at + 1), name(at + 2)) {
                    (Some(Token::Period), Some(second)) => (
                        RelationRef {
                            schema: Some(first),
                            name: second,
                        },
                        i + at + 2,
                    ),
                    _ => (
                        RelationRef {
                            schema: None,
                            name: first,
                        },
                        i + at,
                    ),
                };
                // A name followed by `(` is a function (FROM generate_series(…)).
                let function = matches!(words.get(end + 1), Some(Token::LParen));
                if !function && !reads.contains(&r) {
                    reads.push(r);
                }
            }
            _ => {}
        }
    }
    // A name defined in the query (`name AS (…)`: a CTE, or a window) is not a relation.
    let defined: Vec<String> = words
        .windows(3)
        .filter_map(|w| match w {
            [Token::Word(name), t, Token::LParen] if keyword(t, Keyword::AS) => {
                Some(fold_word(name))
            }
            _ => None,
        })
        .collect();
    reads.retain(|r| r.schema.is_some() || !defined.contains(&r.name));
    Ok((text.to_string(), reads))
}

/// Does the work of [`validate_query`] and also returns the parsed query, so
/// that [`referenced_relations`] accepts exactly the same queries.
///
/// Most queries are valid, and a run validates every enabled manifest (ten
/// thousand on a large installation), so the text to execute is cut first and
/// parsed once: when it is one read-only query, that is what was validated.
/// Anything else goes through the full checks below, for their precise reasons
/// (several statements, not a query, trailing text that would change it).
fn validated_query(sql: &str) -> Result<(&str, Box<Query>), InvalidManifest> {
    if sql.trim().is_empty() {
        return Err(InvalidManifest::EmptyQuery);
    }
    match cut_and_parsed_once(sql) {
        Some(valid) => Ok(valid),
        None => fully_validated(sql),
    }
}

/// The text to execute and its parse, when that text is one read-only query.
fn cut_and_parsed_once(sql: &str) -> Option<(&str, Box<Query>)> {
    let text = strip_trailing(sql).ok()?;
    let mut statements = parse_statements(text).ok()?;
    if statements.len() != 1 {
        return None;
    }
    match statements.remove(0) {
        Statement::Query(query) if query.visit(&mut ReadOnlyQueryCheck).is_continue() => {
            Some((text, query))
        }
        _ => None,
    }
}

/// Parses the whole manifest text, checks it, then cuts it and checks that the
/// cut text parses to the same query: slower, with a precise reason for each
/// refusal.
fn fully_validated(sql: &str) -> Result<(&str, Box<Query>), InvalidManifest> {
    let mut statements = parse_statements(sql).map_err(|e| InvalidManifest::Unparsable {
        message: e.to_string(),
    })?;
    let statement = match statements.len() {
        0 => return Err(InvalidManifest::EmptyQuery),
        1 => statements.remove(0),
        count => return Err(InvalidManifest::MultipleStatements { count }),
    };
    let query = match statement {
        Statement::Query(query) => query,
        other => {
            return Err(InvalidManifest::NotAQuery {
                kind: statement_kind(&other),
            })
        }
    };
    if let ControlFlow::Break(problem) = query.visit(&mut ReadOnlyQueryCheck) {
        return Err(problem);
    }

    let text = strip_trailing(sql)?;
    // Safety net: the text handed back must mean exactly what was validated.
    // Statement equality in sqlparser ignores source positions.
    match parse_statements(text).as_deref() {
        Ok([Statement::Query(reparsed)]) if *reparsed == query => Ok((text, query)),
        _ => Err(InvalidManifest::UnsafeTrailingText),
    }
}

/// Parses `sql` with the PostgreSQL dialect, like [`Parser::parse_sql`], and
/// also accepts a leading `TABLE name` statement.
///
/// sqlparser 0.64 understands `TABLE name` as a query body (`SetExpr::Table`),
/// for example after `UNION`. `Parser::parse_statement` does not dispatch on
/// `TABLE`, though, so a statement that starts with it is parsed here directly
/// as a query.
fn parse_statements(sql: &str) -> Result<Vec<Statement>, ParserError> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    while parser.consume_token(&Token::SemiColon) {}
    if !parser.peek_keyword(Keyword::TABLE) {
        return parser.parse_statements();
    }
    let first = Statement::Query(parser.parse_query()?);
    let next = parser.peek_token();
    if !matches!(next.token, Token::SemiColon | Token::EOF) {
        return parser.expected("end of statement", next);
    }
    let mut statements = vec![first];
    statements.extend(parser.parse_statements()?);
    Ok(statements)
}

/// Walks a parsed query (every nested query, subquery, CTE and set operation
/// operand) and stops at the first construct a materialized view must not
/// contain.
struct ReadOnlyQueryCheck;

impl Visitor for ReadOnlyQueryCheck {
    type Break = InvalidManifest;

    /// `FOR UPDATE` / `FOR SHARE` live in `Query::locks` in sqlparser 0.64.
    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Self::Break> {
        match query.locks.first() {
            Some(lock) => ControlFlow::Break(InvalidManifest::LockingClause {
                clause: lock.to_string(),
            }),
            None => ControlFlow::Continue(()),
        }
    }

    /// `SELECT … INTO t` is `Select::into: Some(SelectInto)` in sqlparser 0.64.
    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<Self::Break> {
        if select.into.is_some() {
            ControlFlow::Break(InvalidManifest::SelectInto)
        } else {
            ControlFlow::Continue(())
        }
    }

    /// The walk starts at the top-level `Query`, so any statement met on the
    /// way is nested in it. In sqlparser 0.64 those are the data-modifying
    /// bodies `SetExpr::Insert`/`Update`/`Delete`/`Merge(Statement)`, which
    /// show up as the query of a `WITH` clause (`WITH d AS (DELETE … RETURNING
    /// *) SELECT …`) or as the body of a `WITH … INSERT …` statement.
    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<Self::Break> {
        ControlFlow::Break(InvalidManifest::DataModifying {
            kind: statement_kind(statement),
        })
    }
}

/// A short SQL-ish name for a statement, for error messages. It is taken from
/// the `Statement` variant name, e.g. `Insert` gives `INSERT` and
/// `CreateTable` gives `CREATE TABLE`.
fn statement_kind(statement: &Statement) -> String {
    let debug = format!("{statement:?}");
    let variant = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    let mut kind = String::with_capacity(variant.len() + 4);
    for (i, c) in variant.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            kind.push(' ');
        }
        kind.push(c.to_ascii_uppercase());
    }
    if kind.is_empty() {
        kind.push_str("not a query");
    }
    kind
}

/// A relation a query reads, as [`referenced_relations`] reports it.
///
/// Both parts are folded the way PostgreSQL folds identifiers: an unquoted
/// identifier is lower-cased (ASCII letters only, like the server), a
/// double-quoted one is kept exactly as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelationRef {
    /// The schema the name is qualified with, `None` when it is unqualified
    /// (the server then resolves it through `search_path`).
    pub schema: Option<String>,
    /// The relation name.
    pub name: String,
}

impl fmt::Display for RelationRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The relations a query reads, as (schema, name) with `schema` None when
/// unqualified; lower-cased unless quoted (PostgreSQL folding), deduplicated,
/// in order of first appearance.
///
/// The query is parsed and checked exactly as by [`validate_query`], so this
/// accepts the same queries and fails with the same errors.
///
/// Every table-like name read anywhere in the query counts: in `FROM` and
/// `JOIN`, in derived tables, in scalar subqueries of the select list, in
/// `EXISTS (…)` and `IN (SELECT …)`, in the operands of set operations, in CTE
/// bodies, and in `TABLE name`. A name with more than two parts
/// (`db.schema.table`) is reported by its last two.
///
/// Not relations, and not reported:
///
/// * CTE names. An unqualified name that matches a CTE in scope refers to the
///   CTE. The scope is PostgreSQL's: a CTE is visible in the rest of the query
///   whose `WITH` defines it (including subqueries) and in the bodies of the
///   CTEs after it, or in all of that `WITH`'s CTE bodies if it is
///   `WITH RECURSIVE`. Outside that query the same name refers to the real
///   table again, and a schema-qualified name never refers to a CTE.
/// * Table functions: `generate_series(1, 10)`, `now()`, `unnest(…)`,
///   `LATERAL f(…)`, `XMLTABLE(…)`. Relations read in subqueries among their
///   arguments still count.
pub fn referenced_relations(query: &str) -> Result<Vec<RelationRef>, InvalidManifest> {
    let (_, query) = validated_query(query)?;
    Ok(relations_of(&query))
}

fn relations_of(query: &Query) -> Vec<RelationRef> {
    let mut collector = RelationCollector::default();
    collector.query(query);
    collector.found
}

/// The CTE names one `WITH` clause defines, and how many of them the part of
/// the query being walked can see.
struct CteScope {
    /// Folded CTE names, in definition order.
    names: Vec<String>,
    /// `names[..visible]` are in scope.
    visible: usize,
}

/// Collects the relations of a query for [`referenced_relations`].
///
/// The query structure that decides CTE scope (`Query`, its `WITH` and its
/// set-expression tree) is walked by hand. Everything else (select lists,
/// `FROM`, `WHERE`, `ORDER BY`, …) goes through sqlparser's visitor in
/// [`InScope`], which hands every subquery it meets back to
/// [`RelationCollector::query`].
#[derive(Default)]
struct RelationCollector {
    /// The `WITH` clauses enclosing the current position, innermost last.
    scopes: Vec<CteScope>,
    /// The relations found so far, without duplicates.
    found: Vec<RelationRef>,
}

impl RelationCollector {
    fn query(&mut self, query: &Query) {
        // Destructured so that a field added by a sqlparser upgrade fails to
        // compile here instead of being skipped silently.
        let Query {
            with,
            body,
            order_by,
            limit_clause,
            fetch,
            locks,
            for_clause,
            settings,
            format_clause,
            pipe_operators,
        } = query;
        if let Some(with) = with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|cte| fold(&cte.alias.name))
                .collect();
            let count = names.len();
            self.scopes.push(CteScope { names, visible: 0 });
            for (index, cte) in with.cte_tables.iter().enumerate() {
                self.set_visible_ctes(if with.recursive { count } else { index });
                self.query(&cte.query);
            }
            self.set_visible_ctes(count);
        }
        self.set_expr(body);
        self.visit_in_scope(order_by);
        self.visit_in_scope(limit_clause);
        self.visit_in_scope(fetch);
        self.visit_in_scope(locks);
        self.visit_in_scope(for_clause);
        self.visit_in_scope(settings);
        self.visit_in_scope(format_clause);
        self.visit_in_scope(pipe_operators);
        if with.is_some() {
            self.scopes.pop();
        }
    }

    fn set_visible_ctes(&mut self, visible: usize) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.visible = visible;
        }
    }

    fn set_expr(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Query(query) => self.query(query),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            // `TABLE name`: sqlparser keeps the name as plain identifiers,
            // not as an `ObjectName`, so the visitor would not report it.
            SetExpr::Table(table) => {
                if let Some(name) = &table.table_name {
                    self.record(table.schema_name.as_ref().map(fold), fold(name));
                }
            }
            // `SELECT`, `VALUES` and anything else.
            other => self.visit_in_scope(other),
        }
    }

    /// Walks `node` with the current CTE scopes, recording its relations and
    /// walking each subquery in it with [`RelationCollector::query`].
    fn visit_in_scope<V: Visit>(&mut self, node: &V) {
        let ControlFlow::Continue(()) = node.visit(&mut InScope {
            collector: self,
            depth: 0,
        });
    }

    fn table_factor(&mut self, factor: &TableFactor) {
        // `args: Some(…)` is a table function call such as
        // `generate_series(1, 10)`; `LATERAL f(…)`, `unnest(…)` and
        // `TABLE(…)` have variants of their own.
        let TableFactor::Table {
            name, args: None, ..
        } = factor
        else {
            return;
        };
        let mut parts = name.0.iter().rev().map(fold_part);
        if let Some(relation) = parts.next() {
            self.record(parts.next(), relation);
        }
    }

    fn record(&mut self, schema: Option<String>, name: String) {
        if schema.is_none() && self.is_cte(&name) {
            return;
        }
        let relation = RelationRef { schema, name };
        if !self.found.contains(&relation) {
            self.found.push(relation);
        }
    }

    fn is_cte(&self, name: &str) -> bool {
        self.scopes
            .iter()
            .any(|scope| scope.names[..scope.visible].iter().any(|cte| cte == name))
    }
}

/// The visitor behind [`RelationCollector::visit_in_scope`]. It records the
/// table factors of the current query level and hands each subquery to
/// [`RelationCollector::query`]. The visitor cannot skip a node's children, so
/// it then ignores everything until it leaves that subquery again.
struct InScope<'a> {
    collector: &'a mut RelationCollector,
    /// How many subqueries deep the visitor is below the node it started at.
    depth: usize,
}

impl Visitor for InScope<'_> {
    type Break = Infallible;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Self::Break> {
        if self.depth == 0 {
            self.collector.query(query);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<Self::Break> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Self::Break> {
        if self.depth == 0 {
            self.collector.table_factor(factor);
        }
        ControlFlow::Continue(())
    }
}

/// An identifier as PostgreSQL resolves it: unquoted identifiers are folded to
/// lower case (ASCII letters only, as the server does), quoted ones are kept.
fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// [`fold`] for a word of the tokenizer's.
fn fold_word(w: &Word) -> String {
    match w.quote_style {
        Some(_) => w.value.clone(),
        None => w.value.to_ascii_lowercase(),
    }
}

/// [`fold`] for one part of an object name. sqlparser only produces the
/// non-identifier parts (`IDENTIFIER(…)`) for Snowflake; they are kept as
/// written.
fn fold_part(part: &ObjectNamePart) -> String {
    match part {
        ObjectNamePart::Identifier(ident) => fold(ident),
        other => other.to_string(),
    }
}

/// The query as it is built and hashed: what surrounds its statement (whitespace, semicolons,
/// trailing comments) cut off; the trimmed text when it does not tokenize. Two manifests whose
/// queries differ only there name one query.
pub fn normalized(sql: &str) -> &str {
    strip_trailing(sql).unwrap_or_else(|_| sql.trim())
}

/// Returns `sql` without leading whitespace and without anything after the
/// last token of the statement: trailing whitespace, semicolons and comments.
fn strip_trailing(sql: &str) -> Result<&str, InvalidManifest> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| InvalidManifest::Unparsable {
            message: format!("sql parser error: {e}"),
        })?;
    let last = tokens
        .iter()
        .rev()
        .find(|t| {
            !matches!(
                t.token,
                Token::Whitespace(_) | Token::SemiColon | Token::EOF
            )
        })
        .ok_or(InvalidManifest::EmptyQuery)?;
    let end = byte_offset(sql, last.span.end).ok_or(InvalidManifest::UnsafeTrailingText)?;
    // Leading semicolons go too (`;SELECT 1` is one statement, as psql runs it), with any
    // comment before the last of them (`/* c */ ; SELECT 1`); a leading comment without one
    // stays part of the query.
    let leading = tokens
        .iter()
        .take_while(|t| matches!(t.token, Token::Whitespace(_) | Token::SemiColon))
        .count();
    let after_semicolons = tokens[..leading]
        .iter()
        .rposition(|t| t.token == Token::SemiColon)
        .map_or(0, |i| i + 1);
    let start = tokens[after_semicolons..]
        .iter()
        .find(|t| {
            !matches!(
                t.token,
                Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
                    | Token::SemiColon
            )
        })
        .and_then(|t| byte_offset(sql, t.span.start))
        .unwrap_or(0);
    sql.get(start..end)
        .filter(|text| !text.trim().is_empty())
        .ok_or(InvalidManifest::UnsafeTrailingText)
}

/// Converts a tokenizer `Location` into a byte offset into `sql`.
///
/// sqlparser counts lines from 1 and starts a new line after each `'\n'`. It
/// counts columns from 1, one per `char`. A token's span ends at the location
/// of the first character after it, so the end of the input is one column past
/// its last character.
fn byte_offset(sql: &str, location: Location) -> Option<usize> {
    let line = usize::try_from(location.line).ok()?;
    let column = usize::try_from(location.column).ok()?;
    let line_index = line.checked_sub(1)?;
    let column_index = column.checked_sub(1)?;
    let line_start = if line_index == 0 {
        0
    } else {
        sql.match_indices('\n').nth(line_index - 1)?.0 + 1
    };
    let rest = sql.get(line_start..)?;
    let mut seen = 0;
    for (offset, c) in rest.char_indices() {
        if seen == column_index {
            return Some(line_start + offset);
        }
        if c == '\n' {
            return None;
        }
        seen += 1;
    }
    (seen == column_index).then_some(sql.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> ViewName {
        ViewName::parse(raw).unwrap_or_else(|e| panic!("{raw:?} should be valid: {e}"))
    }

    fn name_err(raw: &str) -> InvalidManifest {
        match ViewName::parse(raw) {
            Ok(v) => panic!("{raw:?} should be rejected, got {v}"),
            Err(e) => e,
        }
    }

    fn query(sql: &str) -> String {
        validate_query(sql).unwrap_or_else(|e| panic!("{sql:?} should be valid: {e}"))
    }

    fn query_err(sql: &str) -> InvalidManifest {
        match validate_query(sql) {
            Ok(text) => panic!("{sql:?} should be rejected, got {text:?}"),
            Err(e) => e,
        }
    }

    fn invalid_char(raw: &str, part: NamePart, character: char) {
        assert_eq!(
            name_err(raw),
            InvalidManifest::InvalidCharacter {
                table: raw.to_owned(),
                part,
                character
            },
            "{raw:?}"
        );
    }

    // ---- table names: accepted -------------------------------------------------

    #[test]
    fn plain_name_is_accepted() {
        let v = name("reporting.daily_sales");
        assert_eq!(v.schema(), "reporting");
        assert_eq!(v.name(), "daily_sales");
        assert_eq!(v.to_string(), "reporting.daily_sales");
    }

    #[test]
    fn upper_case_is_folded() {
        let v = name("Reporting.Daily_SALES");
        assert_eq!(v.schema(), "reporting");
        assert_eq!(v.name(), "daily_sales");
        assert_eq!(v, name("reporting.daily_sales"));
        assert_eq!(v.to_string(), "reporting.daily_sales");
    }

    #[test]
    fn dollar_digits_and_underscores_are_accepted() {
        let v = name("_stage1.sales$2024_q1");
        assert_eq!(v.schema(), "_stage1");
        assert_eq!(v.name(), "sales$2024_q1");
        assert_eq!(name("a.b").to_string(), "a.b");
        assert_eq!(name("_._").to_string(), "_._");
    }

    #[test]
    fn sixty_three_byte_parts_are_accepted() {
        let long = "a".repeat(63);
        let v = name(&format!("{long}.{long}"));
        assert_eq!(v.schema().len(), 63);
        assert_eq!(v.name().len(), 63);
    }

    #[test]
    fn from_str_matches_parse() {
        assert_eq!(
            "Reporting.X".parse::<ViewName>(),
            ViewName::parse("Reporting.X")
        );
        assert_eq!("a.b.c".parse::<ViewName>(), ViewName::parse("a.b.c"));
    }

    #[test]
    fn names_order_by_schema_then_name() {
        let mut names = [name("b.a"), name("a.z"), name("a.b")];
        names.sort();
        let shown: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a.b", "a.z", "b.a"]);
    }

    // ---- table names: rejected -------------------------------------------------

    #[test]
    fn empty_name_is_rejected() {
        let e = name_err("");
        assert_eq!(e, InvalidManifest::EmptyTableName);
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn one_part_is_rejected() {
        let e = name_err("daily_sales");
        assert_eq!(
            e,
            InvalidManifest::WrongPartCount {
                table: "daily_sales".into(),
                parts: 1
            }
        );
        assert!(e.to_string().contains("found 1 part"), "{e}");
    }

    #[test]
    fn three_parts_are_rejected() {
        let e = name_err("a.b.c");
        assert_eq!(
            e,
            InvalidManifest::WrongPartCount {
                table: "a.b.c".into(),
                parts: 3
            }
        );
        assert!(
            e.to_string().starts_with(
                "invalid table name \"a.b.c\": expected schema.name with exactly one dot"
            ),
            "{e}"
        );
        assert!(matches!(
            name_err("a..b"),
            InvalidManifest::WrongPartCount { parts: 3, .. }
        ));
    }

    #[test]
    fn empty_parts_are_rejected() {
        assert_eq!(
            name_err(".x"),
            InvalidManifest::EmptyPart {
                table: ".x".into(),
                part: NamePart::Schema
            }
        );
        assert_eq!(
            name_err("x."),
            InvalidManifest::EmptyPart {
                table: "x.".into(),
                part: NamePart::Name
            }
        );
        assert_eq!(
            name_err("."),
            InvalidManifest::EmptyPart {
                table: ".".into(),
                part: NamePart::Schema
            }
        );
        assert!(name_err("x.").to_string().contains("name part is empty"));
    }

    #[test]
    fn sixty_four_byte_part_is_rejected() {
        let long = "a".repeat(64);
        let raw = format!("reporting.{long}");
        let e = name_err(&raw);
        assert_eq!(
            e,
            InvalidManifest::PartTooLong {
                table: raw.clone(),
                part: NamePart::Name,
                bytes: 64
            }
        );
        let msg = e.to_string();
        assert!(msg.contains("64 bytes"), "{msg}");
        assert!(msg.contains("63 bytes"), "{msg}");

        assert!(matches!(
            name_err(&format!("{long}.x")),
            InvalidManifest::PartTooLong {
                part: NamePart::Schema,
                bytes: 64,
                ..
            }
        ));
    }

    #[test]
    fn leading_digit_or_dollar_is_rejected() {
        let e = name_err("1reporting.x");
        assert_eq!(
            e,
            InvalidManifest::InvalidStart {
                table: "1reporting.x".into(),
                part: NamePart::Schema,
                character: '1'
            }
        );
        assert!(e.to_string().contains("starts with '1'"), "{e}");
        assert!(matches!(
            name_err("reporting.9x"),
            InvalidManifest::InvalidStart {
                part: NamePart::Name,
                character: '9',
                ..
            }
        ));
        assert!(matches!(
            name_err("reporting.$x"),
            InvalidManifest::InvalidStart { character: '$', .. }
        ));
    }

    #[test]
    fn whitespace_anywhere_is_rejected_not_trimmed() {
        invalid_char(" reporting.x", NamePart::Schema, ' ');
        invalid_char("reporting .x", NamePart::Schema, ' ');
        invalid_char("reporting. x", NamePart::Name, ' ');
        invalid_char("reporting.x ", NamePart::Name, ' ');
        invalid_char("reporting.daily sales", NamePart::Name, ' ');
        invalid_char("\treporting.x", NamePart::Schema, '\t');
        invalid_char("reporting.x\n", NamePart::Name, '\n');
        invalid_char("reporting.x\r\n", NamePart::Name, '\r');
        invalid_char("reporting.\u{a0}x", NamePart::Name, '\u{a0}');
        invalid_char("reporting.x\u{200b}", NamePart::Name, '\u{200b}');
        invalid_char("\u{feff}reporting.x", NamePart::Schema, '\u{feff}');
    }

    #[test]
    fn quotes_semicolons_and_punctuation_are_rejected() {
        invalid_char("\"reporting\".x", NamePart::Schema, '"');
        invalid_char("reporting.\"X\"", NamePart::Name, '"');
        invalid_char("reporting.x;", NamePart::Name, ';');
        invalid_char("reporting.x;drop", NamePart::Name, ';');
        invalid_char("reporting.x'", NamePart::Name, '\'');
        invalid_char("reporting.da-ily", NamePart::Name, '-');
        invalid_char("reporting.x(", NamePart::Name, '(');
        invalid_char("reporting.x/*", NamePart::Name, '/');
    }

    #[test]
    fn the_single_parse_accepts_only_what_the_full_checks_accept() {
        let valid = [
            "SELECT 1",
            "SELECT 1;",
            "  SELECT 1 ;; \n",
            "SELECT 1; -- done",
            "SELECT 1 /* c */ ;",
            "-- leading\nSELECT a FROM t",
            "/* lead */ SELECT a FROM t -- tail",
            "SELECT ';' AS a, '--' AS b, $$;$$ AS c",
            "SELECT $tag$ -- ; $tag$ AS a;",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x UNION SELECT 2",
            "VALUES (1), (2);",
            "TABLE reporting.a",
            "TABLE reporting.a;",
            "SELECT * FROM (SELECT 1) s(a) WHERE a IN (SELECT 1)\n;\n-- end",
            "SELECT \"Ünïcode\" FROM \"We;ird\".\"t--x\"",
        ];
        for q in valid {
            let once = cut_and_parsed_once(q).unwrap_or_else(|| panic!("not parsed once: {q}"));
            let full = fully_validated(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert_eq!(once, full, "{q}");
        }
        let invalid = [
            "SELECT 1; SELECT 2",
            "SELECT 1; -- x\n DROP TABLE t",
            "DELETE FROM t",
            "SELECT 1 INTO t",
            "SELECT * FROM t FOR UPDATE",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT 1 /* unterminated",
            "SELECT 'unterminated",
            "SELEC 1",
            "TABLE a; TABLE b",
            ";",
        ];
        for q in invalid {
            assert!(cut_and_parsed_once(q).is_none(), "parsed once: {q}");
            assert!(fully_validated(q).is_err(), "{q}");
            assert!(validate_query(q).is_err(), "{q}");
        }
    }

    #[test]
    fn letters_of_other_scripts_are_taken_as_postgresql_takes_them() {
        for (raw, schema, name) in [
            ("réporting.x", "réporting", "x"),
            ("reporting.ventes_été", "reporting", "ventes_été"),
            ("Reporting.Ventes_ÉTÉ", "reporting", "ventes_ÉtÉ"),
            ("отчёты.продажи_2024", "отчёты", "продажи_2024"),
            ("reporting.ｘ", "reporting", "ｘ"),
            ("reporting.x٣", "reporting", "x٣"),
        ] {
            let v = ViewName::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            // Only ASCII letters fold, as PostgreSQL folds unquoted names in UTF-8.
            assert_eq!((v.schema(), v.name()), (schema, name), "{raw}");
        }
        // Any visible non-ASCII character, as PostgreSQL takes any non-ASCII byte: combining
        // marks (Devanagari, a decomposed é), a leading digit of another script, symbols.
        for raw in [
            "reporting.नमस्ते",
            "reporting.cafe\u{301}",
            "reporting.٣x",
            "reporting.ventes€",
            "reporting.x«y»",
        ] {
            assert!(ViewName::parse(raw).is_ok(), "{raw}");
        }
        // The tool's own temporary names are not a manifest's.
        for raw in ["reporting._rs_1_new", "reporting._RS_x"] {
            assert!(
                matches!(name_err(raw), InvalidManifest::ReservedName { .. }),
                "{raw}"
            );
        }
        assert!(ViewName::parse("reporting.rs_x").is_ok());
        // Spaces and invisible characters pasted with a name are not.
        invalid_char("reporting.a\u{a0}b", NamePart::Name, '\u{a0}');
        invalid_char("reporting.a\u{200d}b", NamePart::Name, '\u{200d}');
        invalid_char("reporting.a\u{feff}", NamePart::Name, '\u{feff}');
        invalid_char("reporting.\u{2060}a", NamePart::Name, '\u{2060}');
        invalid_char("reporting.a\u{e0041}", NamePart::Name, '\u{e0041}');
        // The limit is PostgreSQL's, in bytes: 31 two-byte letters fit, 32 do not.
        assert!(ViewName::parse(&format!("reporting.{}", "é".repeat(31))).is_ok());
        assert!(matches!(
            name_err(&format!("reporting.{}", "é".repeat(32))),
            InvalidManifest::PartTooLong { bytes: 64, .. }
        ));
    }

    #[test]
    fn invalid_character_message_escapes_it() {
        let msg = name_err("reporting.\u{200b}x").to_string();
        assert!(msg.contains("\\u{200b}"), "{msg}");
        assert!(msg.contains("U+200B"), "{msg}");
        assert!(msg.contains("invalid character"), "{msg}");
        let msg = name_err("reporting.x\n").to_string();
        assert!(msg.contains("\"reporting.x\\n\""), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn huge_names_are_shortened_in_messages() {
        let raw = format!("{}.{}", "a".repeat(500), "b".repeat(500));
        let e = name_err(&raw);
        let InvalidManifest::PartTooLong { table, bytes, .. } = &e else {
            panic!("unexpected error {e:?}");
        };
        assert_eq!(*bytes, 500);
        assert_eq!(table.chars().count(), MAX_ECHOED_CHARS + 1);
        assert!(table.ends_with('…'));
        // Cutting respects multi-byte characters.
        let raw = "é".repeat(300);
        let InvalidManifest::WrongPartCount { table, .. } = name_err(&raw) else {
            panic!("expected WrongPartCount");
        };
        assert_eq!(table.chars().count(), MAX_ECHOED_CHARS + 1);
    }

    #[test]
    fn messages_start_lowercase() {
        let errors = [
            name_err(""),
            name_err("a"),
            name_err(".a"),
            name_err(&format!("a.{}", "b".repeat(64))),
            name_err("1.a"),
            name_err("a. b"),
            query_err(""),
            query_err("SELEC 1"),
            query_err("SELECT 1; SELECT 2"),
            query_err("DROP TABLE x"),
            query_err("SELECT 1 INTO t"),
            query_err("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
            query_err("SELECT * FROM t FOR UPDATE"),
            InvalidManifest::UnsafeTrailingText,
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.starts_with("invalid "), "{msg}");
        }
    }

    // ---- queries: accepted -----------------------------------------------------

    #[test]
    fn simple_select_is_returned_verbatim() {
        let sql = "SELECT id, sum(amount) AS total FROM sales.orders GROUP BY id";
        assert_eq!(query(sql), sql);
    }

    #[test]
    fn original_text_is_returned_not_a_rerendering() {
        let sql = "select  a::text ,  b\n  from   t\n  where x ~~ 'y%'";
        assert_eq!(query(sql), sql);
    }

    #[test]
    fn surrounding_whitespace_is_removed() {
        assert_eq!(query("  \n\tSELECT 1 \n\t "), "SELECT 1");
    }

    #[test]
    fn cte_select_is_accepted() {
        let sql = "WITH recent AS (SELECT * FROM sales.orders WHERE created_at > now() - interval '7 days')\nSELECT count(*) FROM recent";
        assert_eq!(query(sql), sql);
        let sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) SELECT i FROM n";
        assert_eq!(query(sql), sql);
    }

    #[test]
    fn materialized_cte_is_accepted() {
        let sql = "WITH c AS MATERIALIZED (SELECT 1 AS x) SELECT x FROM c";
        assert_eq!(query(sql), sql);
    }

    #[test]
    fn set_operations_are_accepted() {
        for sql in [
            "SELECT a FROM t1 UNION SELECT a FROM t2",
            "SELECT a FROM t1 UNION ALL SELECT a FROM t2 ORDER BY 1 LIMIT 10",
            "SELECT a FROM t1 INTERSECT SELECT a FROM t2",
            "SELECT a FROM t1 EXCEPT SELECT a FROM t2",
            "(SELECT 1) UNION (SELECT 2)",
        ] {
            assert_eq!(query(sql), sql);
        }
    }

    #[test]
    fn values_and_table_are_accepted() {
        assert_eq!(
            query("VALUES (1, 'a'), (2, 'b')"),
            "VALUES (1, 'a'), (2, 'b')"
        );
        assert_eq!(query("TABLE sales.orders"), "TABLE sales.orders");
        assert_eq!(query(" table Sales.Orders ;"), "table Sales.Orders");
        assert_eq!(
            query("TABLE a UNION ALL TABLE b ORDER BY 1"),
            "TABLE a UNION ALL TABLE b ORDER BY 1"
        );
        assert_eq!(query("SELECT 1 UNION TABLE t"), "SELECT 1 UNION TABLE t");
        assert_eq!(query("-- c\n(TABLE t);"), "-- c\n(TABLE t)");
    }

    #[test]
    fn subqueries_and_joins_are_accepted() {
        let sql = "SELECT o.id, (SELECT max(x) FROM y WHERE y.id = o.id) AS m \
                   FROM orders o JOIN LATERAL (SELECT * FROM items i WHERE i.order_id = o.id) li ON true \
                   WHERE EXISTS (SELECT 1 FROM z WHERE z.id = o.id)";
        assert_eq!(query(sql), sql);
    }

    #[test]
    fn comments_inside_are_kept() {
        let sql =
            "-- daily totals\nSELECT a, -- the key\n  /* the sum */ sum(b)\nFROM t GROUP BY a";
        assert_eq!(query(sql), sql);
    }

    #[test]
    fn trailing_semicolons_are_removed() {
        assert_eq!(query("SELECT 1;"), "SELECT 1");
        assert_eq!(query("SELECT 1 ;  ; \n"), "SELECT 1");
        assert_eq!(query("SELECT 1\r\n;\r\n"), "SELECT 1");
    }

    #[test]
    fn trailing_comments_are_removed() {
        assert_eq!(query("SELECT 1; -- done"), "SELECT 1");
        assert_eq!(query("SELECT 1 -- done"), "SELECT 1");
        assert_eq!(query("SELECT 1 -- done\n;"), "SELECT 1");
        assert_eq!(query("SELECT 1; /* done */"), "SELECT 1");
        assert_eq!(query("SELECT 1 /* a /* nested */ comment */"), "SELECT 1");
        assert_eq!(query("SELECT 1; -- a\n-- b\n/* c */ ;\n"), "SELECT 1");
    }

    #[test]
    fn returned_text_embeds_safely() {
        for sql in [
            "SELECT 1; -- done",
            "SELECT 1 -- done",
            "SELECT 1 /* x */ ; -- y",
            "SELECT 'a' AS x -- trailing\n",
            "TABLE sales.orders; -- all of it",
            "WITH c AS (SELECT 1 AS a) SELECT a FROM c -- end",
        ] {
            let text = query(sql);
            assert!(!text.contains("--"), "{text:?}");
            assert!(!text.ends_with(';'), "{text:?}");
            let original = parse_statements(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
            let Some(Statement::Query(original)) = original.first() else {
                panic!("{sql:?} is not a query");
            };
            // Whatever follows the embedded text must stay visible to the server.
            let ddl = format!("CREATE MATERIALIZED VIEW reporting.x AS {text}; SELECT 2");
            let parsed = Parser::parse_sql(&PostgreSqlDialect {}, &ddl)
                .unwrap_or_else(|e| panic!("{ddl:?} does not parse: {e}"));
            assert_eq!(parsed.len(), 2, "{ddl:?}");
            match &parsed[0] {
                Statement::CreateView(view) => {
                    assert!(view.materialized, "{ddl:?}");
                    assert_eq!(&view.query, original, "{ddl:?}");
                }
                other => panic!("{ddl:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn semicolons_and_dashes_inside_literals_are_kept() {
        assert_eq!(query("SELECT ';--' AS x;"), "SELECT ';--' AS x");
        assert_eq!(query("SELECT $$a; b -- c$$ ; -- d"), "SELECT $$a; b -- c$$");
        assert_eq!(query("SELECT $q$;$q$;"), "SELECT $q$;$q$");
        assert_eq!(query("SELECT E'it\\'s;' -- x"), "SELECT E'it\\'s;'");
        assert_eq!(
            query("SELECT \"odd;col\" FROM t;"),
            "SELECT \"odd;col\" FROM t"
        );
        assert_eq!(query("SELECT 'a\\'"), "SELECT 'a\\'");
    }

    #[test]
    fn multibyte_text_is_cut_at_the_right_byte() {
        assert_eq!(query("SELECT 'héllo' ; -- fin"), "SELECT 'héllo'");
        assert_eq!(
            query("SELECT 'é',\n  'ü€𝄞' AS \"ñ\" ;\n-- x"),
            "SELECT 'é',\n  'ü€𝄞' AS \"ñ\""
        );
        assert_eq!(query("-- ünïcödé\nSELECT 1; -- ü"), "-- ünïcödé\nSELECT 1");
    }

    // ---- queries: rejected -----------------------------------------------------

    #[test]
    fn empty_queries_are_rejected() {
        for sql in [
            "",
            "   ",
            "\n\t \r\n",
            ";",
            " ; ; ",
            "-- nothing here",
            "/* nope */;",
        ] {
            assert_eq!(query_err(sql), InvalidManifest::EmptyQuery, "{sql:?}");
        }
    }

    #[test]
    fn unparsable_queries_are_rejected() {
        for sql in [
            "SELEC 1",
            "SELECT FROM WHERE",
            "SELECT (1",
            "SELECT 'unterminated",
            "SELECT 1 /* unterminated",
            "TABLE",
            "TABLE t DROP TABLE t",
        ] {
            let e = query_err(sql);
            let InvalidManifest::Unparsable { message } = &e else {
                panic!("{sql:?}: expected Unparsable, got {e:?}");
            };
            assert!(message.starts_with("sql parser error"), "{message}");
            assert!(e.to_string().contains(message.as_str()), "{e}");
        }
    }

    #[test]
    fn unparsable_postgres_is_accepted_only_when_its_tokens_allow() {
        // PostgreSQL the parser lacks: accepted, trailing and leading ; cut.
        for sql in [
            "select * from rows from (generate_series(1,2)) as t(x);",
            "select n from reporting.base where n between symmetric 2 and 1",
            "select n isnull as missing from reporting.base",
            "(select xmlelement(name foo, 'bar') as x)",
            "with t as (select 1 as n) select n from t where n between symmetric 2 and 0",
            ";select 1 isnull as n",
            "select substring(v from 1 for key) as s from (select 'ab' as v, 2 as key) s where 1 between symmetric 0 and 2",
            "select substring(v for share) as s from (select 'ab' as v, 1 as share) s where 1 between symmetric 0 and 2",
        ] {
            assert!(matches!(query_err(sql), InvalidManifest::Unparsable { .. }), "{sql}");
            let (text, _) = unparsed_postgres(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert!(!text.ends_with(';') && !text.starts_with(';'), "{text}");
        }
        // Parsed or not, leading semicolons are no statement.
        assert_eq!(
            validate_query_and_reads(";SELECT 1 AS n").unwrap().0,
            "SELECT 1 AS n"
        );
        // Nor with a comment before one; a leading comment alone stays with the query.
        for (sql, text) in [
            ("/* c */ ; SELECT 1 AS n", "SELECT 1 AS n"),
            ("-- c\n;; /* d */ SELECT 1 AS n", "/* d */ SELECT 1 AS n"),
            ("/* c */ SELECT 1 AS n;", "/* c */ SELECT 1 AS n"),
            ("/* c */ ; select 1 isnull as n", "select 1 isnull as n"),
        ] {
            let got = validate_query_and_reads(sql)
                .map(|(q, _)| q)
                .or_else(|_| unparsed_postgres(sql).map(|(q, _)| q))
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(got, text, "{sql}");
        }
        // The relations it reads, from the names after FROM and JOIN outside function calls.
        let (_, reads) = unparsed_postgres(
            "select a.n, extract(year from now()) from reporting.base a \
             join ONLY \"Odd\".\"V\" v using (n) cross join lateral (select 1) l, \
             generate_series(1, 2) g where a.n is distinct from v.n and n between symmetric 1 and 2",
        )
        .unwrap();
        assert_eq!(
            reads,
            [rel(Some("reporting"), "base"), rel(Some("Odd"), "V")]
        );
        let (_, reads) = unparsed_postgres(
            "select * from rows from (generate_series(1,2)) as t(x) join stg using (x)",
        )
        .unwrap();
        assert_eq!(reads, [rel(None, "stg")]);
        // A CTE's name is no relation, even where a managed view has the same name.
        let (_, reads) = unparsed_postgres(
            "with stg as (select 1 as n from reporting.base) select n from stg where n isnull",
        )
        .unwrap();
        assert_eq!(reads, [rel(Some("reporting"), "base")]);
        // What the tokens show is refused before anything reaches the server.
        let refused = |sql: &str| unparsed_postgres(sql).unwrap_err();
        assert_eq!(
            refused("select xmlelement(name foo); drop table reporting.victim"),
            InvalidManifest::MultipleStatements { count: 2 }
        );
        for (sql, clause) in [
            (
                "select 1 between symmetric 0 and 2 from t for update",
                "FOR UPDATE",
            ),
            (
                "select 1 between symmetric 0 and 2 from t for no key update",
                "FOR NO KEY UPDATE",
            ),
            (
                "select * from (select 1 from t for share) s where 1 isnull",
                "FOR SHARE",
            ),
            ("select 1 isnull from t for key share of t", "FOR KEY SHARE"),
        ] {
            assert_eq!(
                refused(sql),
                InvalidManifest::LockingClause {
                    clause: clause.into()
                },
                "{sql}"
            );
        }
        assert!(matches!(
            refused("drop table t between symmetric"),
            InvalidManifest::NotAQuery { .. }
        ));
        assert!(matches!(
            refused("SELECT 'unterminated"),
            InvalidManifest::Unparsable { .. }
        ));
    }

    #[test]
    fn two_statements_are_rejected() {
        let e = query_err("SELECT 1; DROP TABLE x");
        assert_eq!(e, InvalidManifest::MultipleStatements { count: 2 });
        assert!(e.to_string().contains("2 statements"), "{e}");
        assert_eq!(
            query_err("SELECT 1; SELECT 2; SELECT 3;"),
            InvalidManifest::MultipleStatements { count: 3 }
        );
        assert_eq!(
            query_err("SELECT 1; -- harmless?\nDELETE FROM x"),
            InvalidManifest::MultipleStatements { count: 2 }
        );
        assert_eq!(
            query_err("TABLE t; DROP TABLE t"),
            InvalidManifest::MultipleStatements { count: 2 }
        );
    }

    #[test]
    fn non_query_statements_are_rejected() {
        for (sql, kind) in [
            ("INSERT INTO t VALUES (1)", "INSERT"),
            ("insert into t select * from u returning *", "INSERT"),
            ("UPDATE t SET a = 1", "UPDATE"),
            ("DELETE FROM t", "DELETE"),
            ("DROP TABLE t", "DROP"),
            ("CREATE TABLE t (a int)", "CREATE TABLE"),
            ("TRUNCATE t", "TRUNCATE"),
        ] {
            let e = query_err(sql);
            assert_eq!(
                e,
                InvalidManifest::NotAQuery { kind: kind.into() },
                "{sql:?}"
            );
            assert!(e.to_string().contains(kind), "{e}");
        }
        for sql in [
            "COPY t TO '/tmp/x'",
            "SET search_path = evil",
            "EXPLAIN SELECT 1",
            "CREATE MATERIALIZED VIEW v AS SELECT 1",
            "GRANT ALL ON t TO public",
            "ALTER TABLE t ADD COLUMN b int",
            "BEGIN",
        ] {
            assert!(
                matches!(query_err(sql), InvalidManifest::NotAQuery { .. }),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn select_into_is_rejected() {
        for sql in [
            "SELECT * INTO new_table FROM t",
            "SELECT 1 AS a INTO TEMPORARY t",
            "SELECT * INTO UNLOGGED TABLE t FROM u",
            "WITH c AS (SELECT 1) SELECT * INTO t FROM c",
        ] {
            let e = query_err(sql);
            assert_eq!(e, InvalidManifest::SelectInto, "{sql:?}");
            assert!(e.to_string().contains("INTO"), "{e}");
        }
    }

    #[test]
    fn nested_select_into_is_rejected() {
        for sql in [
            "SELECT 1 UNION SELECT 2 INTO t",
            "SELECT * FROM (SELECT 1 INTO x) s",
            "WITH c AS (SELECT 1 INTO x) SELECT * FROM c",
        ] {
            assert_eq!(query_err(sql), InvalidManifest::SelectInto, "{sql:?}");
        }
    }

    #[test]
    fn data_modifying_ctes_are_rejected() {
        for (sql, kind) in [
            (
                "WITH ins AS (INSERT INTO audit (x) VALUES (1) RETURNING *) SELECT * FROM ins",
                "INSERT",
            ),
            (
                "WITH u AS (UPDATE t SET a = a + 1 RETURNING a) SELECT a FROM u",
                "UPDATE",
            ),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d",
                "DELETE",
            ),
            (
                "WITH ok AS (SELECT 1), d AS (DELETE FROM t RETURNING *) SELECT * FROM ok",
                "DELETE",
            ),
            (
                "WITH m AS (MERGE INTO t USING s ON t.id = s.id \
                 WHEN MATCHED THEN DELETE RETURNING *) SELECT * FROM m",
                "MERGE",
            ),
        ] {
            let e = query_err(sql);
            assert_eq!(
                e,
                InvalidManifest::DataModifying { kind: kind.into() },
                "{sql:?}"
            );
            assert!(e.to_string().contains("data-modifying"), "{e}");
        }
    }

    #[test]
    fn with_followed_by_data_modification_is_rejected() {
        // sqlparser parses these as `Statement::Query` whose body is
        // `SetExpr::Insert`/`Update`/`Delete(Statement)`.
        for (sql, kind) in [
            (
                "WITH c AS (SELECT 1 AS x) INSERT INTO t SELECT x FROM c",
                "INSERT",
            ),
            (
                "WITH c AS (SELECT 1 AS x) DELETE FROM t WHERE a IN (SELECT x FROM c)",
                "DELETE",
            ),
            ("WITH c AS (SELECT 1 AS x) UPDATE t SET a = 1", "UPDATE"),
        ] {
            assert_eq!(
                query_err(sql),
                InvalidManifest::DataModifying { kind: kind.into() },
                "{sql:?}"
            );
        }
    }

    #[test]
    fn nested_data_modifying_ctes_are_rejected() {
        for sql in [
            // In a derived table.
            "SELECT * FROM (WITH d AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM d) s",
            // In a scalar subquery.
            "SELECT (WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d) AS n",
            // In EXISTS inside WHERE.
            "SELECT 1 FROM u WHERE EXISTS (WITH d AS (UPDATE t SET a = 1 RETURNING a) SELECT 1 FROM d)",
            // Inside a harmless CTE.
            "WITH outer_cte AS (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) SELECT * FROM outer_cte",
            // In the right operand of a set operation.
            "SELECT 1 UNION ALL SELECT * FROM (WITH i AS (INSERT INTO t VALUES (2) RETURNING 2) SELECT * FROM i) s",
        ] {
            assert!(
                matches!(query_err(sql), InvalidManifest::DataModifying { .. }),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn locking_clauses_are_rejected() {
        for (sql, clause) in [
            ("SELECT * FROM t FOR UPDATE", "FOR UPDATE"),
            ("SELECT * FROM t FOR SHARE", "FOR SHARE"),
            (
                "SELECT * FROM t FOR UPDATE OF t NOWAIT",
                "FOR UPDATE OF t NOWAIT",
            ),
            (
                "SELECT * FROM t FOR SHARE SKIP LOCKED",
                "FOR SHARE SKIP LOCKED",
            ),
            ("SELECT * FROM t LIMIT 5 FOR UPDATE", "FOR UPDATE"),
            ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "FOR UPDATE"),
            (
                "WITH c AS (SELECT * FROM t FOR SHARE) SELECT * FROM c",
                "FOR SHARE",
            ),
        ] {
            let e = query_err(sql);
            assert_eq!(
                e,
                InvalidManifest::LockingClause {
                    clause: clause.into()
                },
                "{sql:?}"
            );
            assert!(e.to_string().contains(clause), "{e}");
        }
    }

    #[test]
    fn unsupported_locking_variants_do_not_pass() {
        // sqlparser 0.64 does not parse these; whatever it says, they are rejected.
        for sql in [
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR KEY SHARE",
        ] {
            assert!(validate_query(sql).is_err(), "{sql:?}");
        }
    }

    #[test]
    fn comment_hiding_a_second_statement_is_harmless() {
        assert_eq!(query("SELECT 1 /* ; DROP TABLE x */"), "SELECT 1");
        assert_eq!(query("SELECT 1 -- ; DROP TABLE x"), "SELECT 1");
    }

    // ---- referenced relations --------------------------------------------------

    fn relations(sql: &str) -> Vec<String> {
        referenced_relations(sql)
            .unwrap_or_else(|e| panic!("{sql:?} should be valid: {e}"))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn rel(schema: Option<&str>, name: &str) -> RelationRef {
        RelationRef {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    #[test]
    fn relations_of_a_simple_from() {
        assert_eq!(
            referenced_relations("SELECT a FROM reporting.sales").unwrap(),
            [rel(Some("reporting"), "sales")]
        );
        assert_eq!(
            referenced_relations("SELECT a FROM sales s WHERE s.a > 1").unwrap(),
            [rel(None, "sales")]
        );
        assert_eq!(relations("SELECT 1"), [] as [&str; 0]);
        assert_eq!(relations("VALUES (1), (2)"), [] as [&str; 0]);
    }

    #[test]
    fn relations_of_joins_qualified_and_not() {
        assert_eq!(
            relations(
                "SELECT * FROM sales.orders o \
                 JOIN items i ON i.order_id = o.id \
                 LEFT JOIN public.customers c USING (customer_id) \
                 CROSS JOIN regions, sales.currencies"
            ),
            [
                "sales.orders",
                "items",
                "public.customers",
                "regions",
                "sales.currencies"
            ]
        );
        assert_eq!(
            relations("SELECT * FROM (a JOIN (b JOIN c ON true) ON true)"),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn relation_names_are_folded_unless_quoted() {
        assert_eq!(
            referenced_relations(
                "SELECT * FROM Reporting.DAILY_Sales JOIN \"Sales\".\"Orders\" ON true"
            )
            .unwrap(),
            [
                rel(Some("reporting"), "daily_sales"),
                rel(Some("Sales"), "Orders")
            ]
        );
        assert_eq!(
            relations("SELECT * FROM \"reporting\".X, \"lower\", \"Mixed\", ÄB"),
            ["reporting.x", "lower", "Mixed", "Äb"]
        );
        // Folding makes these the same relation.
        assert_eq!(relations("SELECT * FROM t, T, \"t\""), ["t"]);
    }

    #[test]
    fn cte_names_are_not_relations() {
        assert_eq!(
            relations("WITH x AS (SELECT 1) SELECT * FROM x"),
            [] as [&str; 0]
        );
        assert_eq!(
            relations("WITH x AS (SELECT * FROM reporting.real) SELECT * FROM x"),
            ["reporting.real"]
        );
        // Folding applies to CTE names too.
        assert_eq!(
            relations(
                "WITH Recent AS (SELECT * FROM s.o) SELECT * FROM RECENT JOIN recent r2 ON true"
            ),
            ["s.o"]
        );
        assert_eq!(
            relations("WITH \"X\" AS (SELECT 1) SELECT * FROM \"X\", x"),
            ["x"]
        );
        // A qualified name never refers to a CTE.
        assert_eq!(
            relations("WITH x AS (SELECT 1) SELECT * FROM x, public.x"),
            ["public.x"]
        );
        // CTEs are visible in subqueries, ORDER BY and later CTEs.
        assert_eq!(
            relations(
                "WITH a AS (SELECT * FROM t1), b AS (SELECT * FROM a JOIN t2 ON true) \
                 SELECT * FROM (SELECT * FROM b) s WHERE EXISTS (SELECT 1 FROM a) \
                 ORDER BY (SELECT max(v) FROM b)"
            ),
            ["t1", "t2"]
        );
        assert_eq!(
            relations("WITH c AS (SELECT 1 AS a) TABLE c"),
            [] as [&str; 0]
        );
    }

    #[test]
    fn cte_scope_is_the_with_that_defines_it() {
        // Inside a derived table only: the outer `x` is the real table.
        assert_eq!(
            relations("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s JOIN x ON true"),
            ["x"]
        );
        // In a scalar subquery only.
        assert_eq!(
            relations("SELECT (WITH x AS (SELECT 1 AS v) SELECT v FROM x) FROM x"),
            ["x"]
        );
        // In a CTE body only: the main query's `x` is the real table.
        assert_eq!(
            relations("WITH a AS (WITH x AS (SELECT 1) SELECT * FROM x) SELECT * FROM a, x"),
            ["x"]
        );
        // In the left operand of a UNION only.
        assert_eq!(
            relations("(WITH x AS (SELECT 1) SELECT * FROM x) UNION SELECT * FROM x"),
            ["x"]
        );
        // A non-recursive CTE does not see itself or later CTEs: those names
        // are the real tables.
        assert_eq!(
            relations("WITH x AS (SELECT * FROM x) SELECT * FROM x"),
            ["x"]
        );
        assert_eq!(
            relations("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b"),
            ["b"]
        );
        // WITH RECURSIVE puts all of its CTEs in scope in all of its bodies.
        assert_eq!(
            relations(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) \
                 SELECT i FROM n"
            ),
            [] as [&str; 0]
        );
        assert_eq!(
            relations(
                "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT * FROM t) SELECT * FROM a"
            ),
            ["t"]
        );
        // An inner CTE shadows an outer one of the same name, and only inside.
        assert_eq!(
            relations(
                "WITH x AS (SELECT * FROM t1) \
                 SELECT * FROM x, (WITH x AS (SELECT * FROM t2) SELECT * FROM x) s, \
                 (SELECT * FROM x) s2"
            ),
            ["t1", "t2"]
        );
    }

    #[test]
    fn table_functions_are_not_relations() {
        assert_eq!(
            relations("SELECT * FROM generate_series(1, 10) AS g(i)"),
            [] as [&str; 0]
        );
        assert_eq!(
            relations("SELECT * FROM pg_catalog.generate_series(1, 10) WITH ORDINALITY"),
            [] as [&str; 0]
        );
        assert_eq!(
            relations("SELECT * FROM unnest(ARRAY[1, 2]) AS u(v)"),
            [] as [&str; 0]
        );
        assert_eq!(
            relations(
                "SELECT * FROM orders o, LATERAL jsonb_array_elements(o.items) AS e \
                 CROSS JOIN LATERAL unnest(o.tags) AS t"
            ),
            ["orders"]
        );
        // A table function of no arguments is still a call, not a table.
        assert_eq!(relations("SELECT * FROM now()"), [] as [&str; 0]);
        // Relations read in a table function's arguments still count.
        assert_eq!(
            relations(
                "SELECT * FROM generate_series(1, (SELECT max(n) FROM reporting.limits)), \
                 LATERAL f((SELECT count(*) FROM items))"
            ),
            ["reporting.limits", "items"]
        );
    }

    #[test]
    fn relations_in_subqueries_count() {
        // Derived table.
        assert_eq!(
            relations("SELECT * FROM (SELECT * FROM inner_t) s JOIN LATERAL (SELECT * FROM lat) l ON true"),
            ["inner_t", "lat"]
        );
        // Scalar subquery in the select list.
        assert_eq!(
            relations("SELECT (SELECT max(x) FROM y WHERE y.id = o.id) AS m FROM orders o"),
            ["y", "orders"]
        );
        // EXISTS and IN in WHERE, nested.
        assert_eq!(
            relations(
                "SELECT 1 FROM u WHERE EXISTS (SELECT 1 FROM z WHERE z.id = u.id) \
                 AND u.k IN (SELECT k FROM s.keys WHERE k NOT IN (SELECT k FROM s.blocked))"
            ),
            ["u", "z", "s.keys", "s.blocked"]
        );
        // In HAVING, a function argument, ARRAY(…) and = ANY (…).
        assert_eq!(
            relations(
                "SELECT coalesce((SELECT 1 FROM a), 0), ARRAY(SELECT v FROM b) FROM t \
                 GROUP BY 1 HAVING count(*) > (SELECT count(*) FROM c) \
                 AND 1 = ANY (SELECT 1 FROM d)"
            ),
            ["a", "b", "t", "c", "d"]
        );
    }

    #[test]
    fn relations_of_set_operations() {
        assert_eq!(
            relations("SELECT a FROM t1 UNION SELECT a FROM s.t2"),
            ["t1", "s.t2"]
        );
        assert_eq!(
            relations(
                "SELECT a FROM t1 UNION ALL (SELECT a FROM t2 EXCEPT SELECT a FROM t3) \
                 INTERSECT TABLE t4 ORDER BY 1"
            ),
            ["t1", "t2", "t3", "t4"]
        );
    }

    #[test]
    fn three_part_names_use_the_last_two() {
        assert_eq!(
            referenced_relations("SELECT * FROM mydb.Reporting.Sales").unwrap(),
            [rel(Some("reporting"), "sales")]
        );
    }

    #[test]
    fn duplicates_are_removed_in_first_appearance_order() {
        assert_eq!(
            relations(
                "SELECT * FROM b JOIN a ON true JOIN b b2 ON true \
                 WHERE EXISTS (SELECT 1 FROM c JOIN a ON true) UNION SELECT * FROM B, s.b"
            ),
            ["b", "a", "c", "s.b"]
        );
    }

    #[test]
    fn relations_of_table_queries() {
        assert_eq!(
            referenced_relations("TABLE reporting.x").unwrap(),
            [rel(Some("reporting"), "x")]
        );
        assert_eq!(relations(" table Sales.Orders ;"), ["sales.orders"]);
        assert_eq!(relations("TABLE \"Odd\""), ["Odd"]);
        assert_eq!(
            relations("TABLE a UNION ALL TABLE b ORDER BY 1"),
            ["a", "b"]
        );
        assert_eq!(relations("-- c\n(TABLE t);"), ["t"]);
        // Order of appearance holds across TABLE and SELECT operands.
        assert_eq!(
            relations("TABLE a UNION VALUES ((SELECT 1 FROM b)) UNION SELECT * FROM c"),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn relations_reject_what_validation_rejects() {
        for sql in [
            "",
            "SELEC 1",
            "SELECT 1; SELECT 2",
            "DELETE FROM t",
            "SELECT * INTO x FROM t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT * FROM t FOR UPDATE",
            "TABLE t DROP TABLE t",
        ] {
            assert_eq!(referenced_relations(sql), Err(query_err(sql)), "{sql:?}");
        }
    }

    // ---- helpers ---------------------------------------------------------------

    #[test]
    fn byte_offset_maps_locations() {
        let sql = "ab\nçd\n";
        assert_eq!(byte_offset(sql, Location::new(1, 1)), Some(0));
        assert_eq!(byte_offset(sql, Location::new(1, 3)), Some(2));
        assert_eq!(byte_offset(sql, Location::new(2, 2)), Some(5));
        assert_eq!(byte_offset(sql, Location::new(2, 3)), Some(6));
        assert_eq!(byte_offset(sql, Location::new(3, 1)), Some(sql.len()));
        assert_eq!(byte_offset(sql, Location::new(2, 9)), None);
        assert_eq!(byte_offset(sql, Location::new(0, 0)), None);
        assert_eq!(byte_offset(sql, Location::new(9, 1)), None);
        assert_eq!(byte_offset("é", Location::new(1, 2)), Some(2));
    }

    /// Everyday PostgreSQL from reporting queries: none of it may be refused as unparsable.
    #[test]
    fn everyday_postgresql_reporting_queries_are_accepted() {
        let queries = [
        "SELECT DISTINCT ON (agency_slug) agency_slug, arrested_on FROM demo.arrests ORDER BY agency_slug, arrested_on DESC",
        "SELECT count(*) FILTER (WHERE offense = 'fraud') AS frauds FROM demo.arrests",
        "SELECT agency_slug, row_number() OVER (PARTITION BY agency_slug ORDER BY id) AS rn FROM demo.arrests",
        "SELECT a.id FROM demo.arrests a, LATERAL (SELECT 1 AS x) l",
        "SELECT payload->>'name' AS name, payload #>> '{a,b}' AS deep FROM demo.events",
        "SELECT id FROM demo.arrests WHERE offense ILIKE '%theft%' AND offense ~* '^t'",
        "SELECT now() - interval '1 day' AS yesterday, date_trunc('month', now())::date AS m",
        "SELECT ARRAY[1,2,3] AS a, (ARRAY['x','y'])[1] AS first",
        "SELECT extract(epoch FROM now()) AS e, now() AT TIME ZONE 'UTC' AS utc",
        "SELECT agency_slug, offense, count(*) FROM demo.arrests GROUP BY GROUPING SETS ((agency_slug), (offense))",
        "SELECT E'a\\nb' AS s, $$dollar$$ AS d",
        "SELECT id FROM demo.arrests TABLESAMPLE SYSTEM (10)",
        "SELECT coalesce(nullif(offense, ''), 'unknown') AS o, greatest(1, 2) AS g FROM demo.arrests",
        "SELECT x::numeric(10,2), y::timestamptz FROM (VALUES (1, '2020-01-01')) v(x, y)",
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY id) AS median FROM demo.arrests",
        "SELECT string_agg(offense, ', ' ORDER BY offense) AS offenses FROM demo.arrests",
        "SELECT id FROM demo.arrests WHERE arrested_on BETWEEN '2026-01-01' AND '2026-02-01' AND id = ANY('{1,2}'::int[])",
        "SELECT jsonb_build_object('a', 1) AS j, to_char(now(), 'YYYY-MM') AS ym",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT n FROM t",
        "SELECT id FROM demo.arrests WHERE offense IS DISTINCT FROM 'fraud'",
        "SELECT count(*) AS n FROM demo.arrests a JOIN demo.agencies g USING (agency_slug)",
        "SELECT (SELECT max(id) FROM demo.arrests) AS top, EXISTS (SELECT 1 FROM demo.arrests) AS any",
        "SELECT id, CASE WHEN id % 2 = 0 THEN 'even' ELSE 'odd' END AS parity FROM demo.arrests ORDER BY id LIMIT 10 OFFSET 5",
        "SELECT 'a' || 'b' AS ab, position('b' in 'abc') AS p, substring('abc' from 2 for 1) AS s",
        "SELECT id FROM demo.arrests FETCH FIRST 3 ROWS ONLY",
        "SELECT t.* FROM unnest(ARRAY[1,2]) WITH ORDINALITY AS t(v, n)",
        "SELECT date '2026-01-01' + 7 AS d, timestamp '2026-01-01 00:00' AS ts",
        "SELECT count(*)::int AS n, sum(id)::bigint AS s FROM demo.arrests HAVING count(*) > 0",
    ];
        for q in queries {
            assert!(validate_query(q).is_ok(), "{q}: {:?}", validate_query(q));
        }
    }
}
