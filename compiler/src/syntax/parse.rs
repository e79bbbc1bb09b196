//! Parsing: pest pairs to the AST, and pest errors to token-level syntax errors.
//!
//! The parser never panics on any input: every `expect`-like step on pest
//! pairs is guarded (the grammar guarantees the shape, but a mismatch would
//! only be a bug, so it becomes a syntax error rather than a crash). After a
//! syntax error it resynchronises at the next line that starts an item
//! (`use`, `adapt`, `exclude`, `train`, `adapter`, `model`, `preset`) so that
//! one run reports every syntax error of a file.

use pest::Parser;
use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;

use super::ast::*;

#[derive(pest_derive::Parser)]
#[grammar = "../../grammar/lamda.pest"]
struct LamdaParser;

/// A syntax error: where, what the parser expected (as tokens), what it found.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub span: Span,
    /// Token descriptions such as "`rank`" or "a number", sorted, deduplicated.
    pub expected: Vec<String>,
    /// What stands at the error position: "`foo`", "`)`", "end of file".
    pub found: String,
    /// Set when the error is an unterminated string literal.
    pub unterminated_string: bool,
}

/// Parses a whole file; on failure, returns every syntax error found.
pub fn parse_file(src: &str) -> Result<File, Vec<SyntaxError>> {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    let mut offset = 0;
    while offset <= src.len() {
        let rest = &src[offset..];
        match LamdaParser::parse(Rule::file, rest) {
            Ok(mut pairs) => {
                let Some(file) = pairs.next() else { break };
                for pair in file.into_inner() {
                    if pair.as_rule() == Rule::EOI {
                        continue;
                    }
                    match build_item(pair, offset) {
                        Ok(item) => items.push(item),
                        Err(e) => errors.push(e),
                    }
                }
                break;
            }
            Err(err) => {
                let pos = match err.location {
                    InputLocation::Pos(p) => p,
                    InputLocation::Span((s, _)) => s,
                };
                let expected = match &err.variant {
                    ErrorVariant::ParsingError { positives, .. } => describe_expected(positives),
                    ErrorVariant::CustomError { .. } => Vec::new(),
                };
                let at = offset + pos;
                if at > offset && starts_item_line(src, at) {
                    // The previous item stopped short: say so at its end, and
                    // go on parsing from this line.
                    let end = code_end(src, at);
                    errors.push(SyntaxError {
                        span: Span::new(src[..end].char_indices().last().map_or(0, |(i, _)| i), end),
                        expected,
                        found: "end of line".to_string(),
                        unterminated_string: false,
                    });
                    offset = at;
                    continue;
                }
                errors.push(syntax_error(src, at, expected));
                // Resynchronise at the next line that starts an item.
                match next_item_start(src, at) {
                    Some(next) => offset = next,
                    None => break,
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(File { items })
    } else {
        Err(errors)
    }
}

const ITEM_KEYWORDS: [&str; 7] = ["use", "adapt", "exclude", "train", "adapter", "model", "preset"];

/// The end of the last code (not comment, not whitespace) before `pos`.
fn code_end(src: &str, pos: usize) -> usize {
    let mut end = pos;
    while end > 0 {
        let line_start = src[..end]
            .trim_end_matches(['\n', '\r'])
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = &src[line_start..end];
        let mut in_str = false;
        let mut cut = line.len();
        for (i, c) in line.char_indices() {
            match c {
                '"' => in_str = !in_str,
                '#' if !in_str => {
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        let code = line[..cut].trim_end();
        if !code.is_empty() {
            return line_start + code.len();
        }
        if line_start == 0 {
            return 0;
        }
        end = line_start - 1;
    }
    0
}

/// Whether `pos` is the first word of a line and that word starts an item.
fn starts_item_line(src: &str, pos: usize) -> bool {
    let line_start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
    if !src[line_start..pos].trim().is_empty() {
        return false;
    }
    let word: String = src[pos..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    ITEM_KEYWORDS.contains(&word.as_str())
}

/// The byte offset of the first line after `pos` whose first word starts an item.
fn next_item_start(src: &str, pos: usize) -> Option<usize> {
    let mut line_start = src[pos..].find('\n')? + pos + 1;
    while line_start < src.len() {
        let line = &src[line_start..];
        let word: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ITEM_KEYWORDS.contains(&word.as_str()) {
            return Some(line_start);
        }
        line_start += line.find('\n')? + 1;
    }
    None
}

fn syntax_error(src: &str, pos: usize, expected: Vec<String>) -> SyntaxError {
    let rest = &src[pos.min(src.len())..];
    let (found, len) = describe_found(rest);
    let unterminated_string = rest.starts_with('"') && !rest[1..].split('\n').next().unwrap_or("").contains('"');
    let span = if unterminated_string {
        Span::new(pos, pos + rest.find('\n').unwrap_or(rest.len()))
    } else {
        Span::new(pos, pos + len)
    };
    SyntaxError {
        span,
        expected,
        found,
        unterminated_string,
    }
}

/// Names the token at the start of `rest` and its byte length.
fn describe_found(rest: &str) -> (String, usize) {
    let Some(c) = rest.chars().next() else {
        return ("end of file".to_string(), 0);
    };
    if c.is_ascii_alphanumeric() || c == '_' {
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
            .collect();
        let word = word.trim_end_matches('.').to_string();
        let len = word.len();
        return (format!("`{word}`"), len.max(1));
    }
    if c == '\n' {
        return ("end of line".to_string(), 1);
    }
    if c == '"' {
        return ("a string".to_string(), 1);
    }
    (format!("`{c}`"), c.len_utf8())
}

fn describe_expected(rules: &[Rule]) -> Vec<String> {
    let mut out: Vec<String> = rules
        .iter()
        .filter_map(|r| describe_rule(*r))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What a user calls the token a rule stands for; `None` for rules that
/// never surface alone.
fn describe_rule(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::EOI => "end of file",
        Rule::kw_use => "`use`",
        Rule::kw_as => "`as`",
        Rule::kw_adapt => "`adapt`",
        Rule::kw_exclude => "`exclude`",
        Rule::kw_with => "`with`",
        Rule::kw_rank => "`rank`",
        Rule::kw_auto => "`auto`",
        Rule::kw_alpha => "`alpha`",
        Rule::kw_freeze_b => "`freeze_b`",
        Rule::kw_train => "`train`",
        Rule::kw_every => "`every`",
        Rule::kw_adapter => "`adapter`",
        Rule::kw_tensor => "`tensor`",
        Rule::kw_init => "`init`",
        Rule::kw_trainable => "`trainable`",
        Rule::kw_frozen => "`frozen`",
        Rule::kw_base => "`base`",
        Rule::kw_keep => "`keep`",
        Rule::kw_residual => "`residual`",
        Rule::kw_path => "`path`",
        Rule::kw_freeze => "`freeze`",
        Rule::kw_by => "`by`",
        Rule::kw_columns => "`columns`",
        Rule::kw_default => "`default`",
        Rule::kw_model => "`model`",
        Rule::kw_preset => "`preset`",
        Rule::kw_tied => "`tied`",
        Rule::kw_when => "`when`",
        Rule::kw_forward => "`forward`",
        Rule::kw_for => "`for`",
        Rule::kw_in => "`in`",
        Rule::kw_return => "`return`",
        Rule::ident | Rule::seg_name | Rule::dotted => "a name",
        Rule::int => "an integer",
        Rule::number => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::string | Rule::string_inner => "a string",
        Rule::value => "a value",
        Rule::tuple => "a tuple",
        Rule::call | Rule::call_expr => "a call",
        Rule::call_args => "`(`",
        Rule::arg | Rule::expr_arg => "an argument",
        Rule::use_stmt => "`use`",
        Rule::adapt_stmt => "`adapt`",
        Rule::exclude_stmt => "`exclude`",
        Rule::train_block => "`train`",
        Rule::adapter_def => "`adapter`",
        Rule::model_def => "`model`",
        Rule::preset_def => "`preset`",
        Rule::pattern | Rule::segment => "a module pattern",
        Rule::seg_deep => "`**`",
        Rule::seg_any => "`*`",
        Rule::seg_alts => "`{`",
        Rule::seg_index => "`[`",
        Rule::index_item | Rule::index_range => "an index",
        Rule::index_all => "`*`",
        Rule::with_clause => "`with`",
        Rule::rank_clause => "`rank`",
        Rule::rank_auto => "`auto`",
        Rule::alpha_clause => "`alpha`",
        Rule::freeze_clause => "`freeze_b`",
        Rule::train_entry => "a train setting",
        Rule::every => "`every`",
        Rule::expr | Rule::product | Rule::unary => "an expression",
        Rule::neg => "`-`",
        Rule::add_op => "`+` or `-`",
        Rule::mul_op => "`*`, `/` or `@`",
        Rule::param_list => "`(`",
        Rule::param_decl => "a parameter",
        Rule::tensor_decl => "`tensor`",
        Rule::shape => "`[`",
        Rule::trainability => "`trainable` or `frozen`",
        Rule::base_decl => "`base`",
        Rule::freeze_decl => "`freeze`",
        Rule::path_decl => "`path`",
        Rule::module_decl => "a module declaration",
        Rule::tied => "`tied`",
        Rule::group_decl => "a group",
        Rule::forward_def => "`forward`",
        Rule::block => "`{`",
        Rule::for_stmt => "`for`",
        Rule::return_stmt => "`return`",
        Rule::assign_stmt => "an assignment",
        Rule::reserved => return None,
        _ => return None,
    })
}

// ------------------------------------------------------------------ building the AST

/// An internal mismatch between grammar and builder: reported as a syntax
/// error at the pair's position rather than a panic.
fn shape_error(pair_span: Span, what: &str) -> SyntaxError {
    SyntaxError {
        span: pair_span,
        expected: vec![what.to_string()],
        found: "something else".to_string(),
        unterminated_string: false,
    }
}

type R<T> = Result<T, SyntaxError>;

struct Cx {
    offset: usize,
}

impl Cx {
    fn span(&self, pair: &Pair<Rule>) -> Span {
        let s = pair.as_span();
        Span::new(s.start() + self.offset, s.end() + self.offset)
    }
    fn ident(&self, pair: &Pair<Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(pair),
        }
    }
}

fn next<'a>(it: &mut impl Iterator<Item = Pair<'a, Rule>>, at: Span, what: &str) -> R<Pair<'a, Rule>> {
    it.next().ok_or_else(|| shape_error(at, what))
}

fn build_item(pair: Pair<Rule>, offset: usize) -> R<Item> {
    let cx = Cx { offset };
    let span = cx.span(&pair);
    Ok(match pair.as_rule() {
        Rule::use_stmt => Item::Use(build_use(&cx, pair)?),
        Rule::adapt_stmt => Item::Adapt(build_adapt(&cx, pair)?),
        Rule::exclude_stmt => {
            let mut it = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_exclude);
            let pattern = build_pattern(&cx, next(&mut it, span, "a module pattern")?)?;
            Item::Exclude(ExcludeStmt { pattern, span })
        }
        Rule::train_block => Item::Train(build_train(&cx, pair)?),
        Rule::adapter_def => Item::Adapter(build_adapter(&cx, pair)?),
        Rule::model_def => Item::Model(build_model(&cx, pair)?),
        Rule::preset_def => {
            let mut it = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_preset);
            let name = cx.ident(&next(&mut it, span, "a name")?);
            let v = next(&mut it, span, "a call")?;
            let value = build_call_or_ident(&cx, v)?;
            Item::Preset(PresetDef { name, value, span })
        }
        _ => return Err(shape_error(span, "an item")),
    })
}

fn build_use(cx: &Cx, pair: Pair<Rule>) -> R<UseStmt> {
    let span = cx.span(&pair);
    let mut target = None;
    let mut alias = None;
    for p in pair.into_inner() {
        match p.as_rule() {
            Rule::string => {
                let s = cx.span(&p);
                target = Some(UseTarget::Path {
                    path: unescape(string_body(&p)),
                    span: s,
                });
            }
            Rule::ident if target.is_none() => target = Some(UseTarget::Named(cx.ident(&p))),
            Rule::ident => alias = Some(cx.ident(&p)),
            _ => {}
        }
    }
    let target = target.ok_or_else(|| shape_error(span, "a model"))?;
    Ok(UseStmt { target, alias, span })
}

fn string_body<'a>(p: &Pair<'a, Rule>) -> &'a str {
    let s = p.as_str();
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn build_pattern(cx: &Cx, pair: Pair<Rule>) -> R<Pattern> {
    let span = cx.span(&pair);
    let mut segments = Vec::new();
    for seg in pair.into_inner() {
        let sspan = cx.span(&seg);
        let mut kind = None;
        let mut index = None;
        for p in seg.into_inner() {
            match p.as_rule() {
                Rule::seg_name => kind = Some(SegKind::Name(p.as_str().to_string())),
                Rule::seg_any => kind = Some(SegKind::Any),
                Rule::seg_deep => kind = Some(SegKind::Deep),
                Rule::seg_alts => {
                    let names = p
                        .into_inner()
                        .map(|n| Ident {
                            name: n.as_str().to_string(),
                            span: cx.span(&n),
                        })
                        .collect();
                    kind = Some(SegKind::Alts(names));
                }
                Rule::seg_index => {
                    let mut items = Vec::new();
                    for item in p.into_inner() {
                        let ispan = cx.span(&item);
                        let inner = next(&mut item.into_inner(), ispan, "an index")?;
                        items.push(match inner.as_rule() {
                            Rule::index_all => IndexItem::All(ispan),
                            Rule::index_range => {
                                let mut ends = inner.into_inner();
                                let a = parse_index(&next(&mut ends, ispan, "an integer")?, ispan)?;
                                let b = parse_index(&next(&mut ends, ispan, "an integer")?, ispan)?;
                                IndexItem::Range(a, b, ispan)
                            }
                            _ => IndexItem::One(parse_index(&inner, ispan)?, ispan),
                        });
                    }
                    index = Some(items);
                }
                _ => {}
            }
        }
        let kind = kind.ok_or_else(|| shape_error(sspan, "a pattern segment"))?;
        segments.push(Segment {
            kind,
            index,
            span: sspan,
        });
    }
    Ok(Pattern { segments, span })
}

fn parse_index(p: &Pair<Rule>, span: Span) -> R<u64> {
    p.as_str().parse::<u64>().map_err(|_| SyntaxError {
        span,
        expected: vec!["an index below 2^64".to_string()],
        found: format!("`{}`", p.as_str()),
        unterminated_string: false,
    })
}

fn build_adapt(cx: &Cx, pair: Pair<Rule>) -> R<AdaptStmt> {
    let span = cx.span(&pair);
    let mut it = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_adapt);
    let pattern = build_pattern(cx, next(&mut it, span, "a module pattern")?)?;
    let mut clauses = Vec::new();
    for c in it {
        let cspan = cx.span(&c);
        let rule = c.as_rule();
        let mut inner = c.into_inner();
        let kw = next(&mut inner, cspan, "a clause")?;
        let keyword = cx.span(&kw);
        let body = next(&mut inner, cspan, "a value")?;
        let kind = match rule {
            Rule::with_clause => ClauseKind::With(build_call_or_ident(cx, body)?),
            Rule::rank_clause => {
                if body.as_rule() == Rule::rank_auto {
                    let aspan = cx.span(&body);
                    let args = match body.into_inner().find(|p| p.as_rule() == Rule::call_args) {
                        Some(a) => build_args(cx, a)?,
                        None => Vec::new(),
                    };
                    ClauseKind::Rank(RankSpec::Auto { args, span: aspan })
                } else {
                    ClauseKind::Rank(RankSpec::Fixed(build_value(cx, body)?))
                }
            }
            Rule::alpha_clause => ClauseKind::Alpha(build_value(cx, body)?),
            Rule::freeze_clause => ClauseKind::FreezeB(build_call_or_ident(cx, body)?),
            _ => return Err(shape_error(cspan, "a clause")),
        };
        clauses.push(Clause {
            kind,
            keyword,
            span: cspan,
        });
    }
    Ok(AdaptStmt { pattern, clauses, span })
}

fn build_call_or_ident(cx: &Cx, pair: Pair<Rule>) -> R<Call> {
    let span = cx.span(&pair);
    match pair.as_rule() {
        Rule::ident => Ok(Call {
            name: cx.ident(&pair),
            args: Vec::new(),
            parens: false,
            span,
        }),
        Rule::call => build_call(cx, pair),
        _ => Err(shape_error(span, "a name or a call")),
    }
}

fn build_call(cx: &Cx, pair: Pair<Rule>) -> R<Call> {
    let span = cx.span(&pair);
    let mut it = pair.into_inner();
    let name = cx.ident(&next(&mut it, span, "a name")?);
    let args = build_args(cx, next(&mut it, span, "`(`")?)?;
    Ok(Call {
        name,
        args,
        parens: true,
        span,
    })
}

fn build_args(cx: &Cx, pair: Pair<Rule>) -> R<Vec<Arg>> {
    let mut args = Vec::new();
    for a in pair.into_inner() {
        let aspan = cx.span(&a);
        let mut name = None;
        let mut value = None;
        for p in a.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(cx.ident(&p)),
                Rule::value => value = Some(build_value(cx, p)?),
                _ => {}
            }
        }
        let value = value.ok_or_else(|| shape_error(aspan, "a value"))?;
        args.push(Arg {
            name,
            value,
            span: aspan,
        });
    }
    Ok(args)
}

fn build_value(cx: &Cx, pair: Pair<Rule>) -> R<Value> {
    let span = cx.span(&pair);
    let inner = if pair.as_rule() == Rule::value {
        next(&mut pair.into_inner(), span, "a value")?
    } else {
        pair
    };
    let kind = match inner.as_rule() {
        Rule::number => parse_number(inner.as_str(), span)?,
        Rule::string => ValueKind::Str(unescape(string_body(&inner))),
        Rule::boolean => ValueKind::Bool(inner.as_str() == "true"),
        Rule::ident => ValueKind::Ident(inner.as_str().to_string()),
        Rule::tuple => ValueKind::Tuple(inner.into_inner().map(|p| build_value(cx, p)).collect::<R<_>>()?),
        Rule::call => ValueKind::Call(build_call(cx, inner)?),
        _ => return Err(shape_error(span, "a value")),
    };
    Ok(Value { kind, span })
}

fn parse_number(text: &str, span: Span) -> R<ValueKind> {
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    let is_int = !clean.contains(['.', 'e', 'E']);
    let bad = || SyntaxError {
        span,
        expected: vec!["a number that fits in 64 bits".to_string()],
        found: format!("`{text}`"),
        unterminated_string: false,
    };
    if is_int {
        clean.parse::<i64>().map(ValueKind::Int).map_err(|_| bad())
    } else {
        match clean.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(ValueKind::Float(x)),
            _ => Err(bad()),
        }
    }
}

fn build_train(cx: &Cx, pair: Pair<Rule>) -> R<TrainBlock> {
    let span = cx.span(&pair);
    let mut entries = Vec::new();
    for e in pair.into_inner().filter(|p| p.as_rule() == Rule::train_entry) {
        let espan = cx.span(&e);
        let mut it = e.into_inner();
        let key = cx.ident(&next(&mut it, espan, "a name")?);
        let v = next(&mut it, espan, "a value")?;
        let (value, every) = if v.as_rule() == Rule::every {
            let n = next(
                &mut v.into_inner().filter(|p| p.as_rule() == Rule::number),
                espan,
                "a number",
            )?;
            let nspan = cx.span(&n);
            (
                Value {
                    kind: parse_number(n.as_str(), nspan)?,
                    span: nspan,
                },
                true,
            )
        } else {
            (build_value(cx, v)?, false)
        };
        entries.push(TrainEntry {
            key,
            value,
            every,
            span: espan,
        });
    }
    Ok(TrainBlock { entries, span })
}

// ------------------------------------------------------------------ expressions

fn build_expr(cx: &Cx, pair: Pair<Rule>) -> R<Expr> {
    let span = cx.span(&pair);
    match pair.as_rule() {
        Rule::expr | Rule::product => {
            let mut it = pair.into_inner();
            let mut acc = build_expr(cx, next(&mut it, span, "an expression")?)?;
            while let Some(op) = it.next() {
                let op = match op.as_str() {
                    "+" => BinOp::Add,
                    "-" => BinOp::Sub,
                    "*" => BinOp::Mul,
                    "/" => BinOp::Div,
                    _ => BinOp::MatMul,
                };
                let rhs = build_expr(cx, next(&mut it, span, "an expression")?)?;
                let s = acc.span.join(rhs.span);
                acc = Expr {
                    kind: ExprKind::Bin {
                        op,
                        lhs: Box::new(acc),
                        rhs: Box::new(rhs),
                    },
                    span: s,
                };
            }
            Ok(acc)
        }
        Rule::unary => {
            let mut it = pair.into_inner().peekable();
            let negated = it.peek().is_some_and(|p| p.as_rule() == Rule::neg);
            if negated {
                it.next();
            }
            let inner = build_expr(cx, next(&mut it, span, "an expression")?)?;
            Ok(if negated {
                Expr {
                    kind: ExprKind::Neg(Box::new(inner)),
                    span,
                }
            } else {
                inner
            })
        }
        Rule::number => {
            let kind = match parse_number(pair.as_str(), span)? {
                ValueKind::Int(i) => ExprKind::Num {
                    value: i as f64,
                    is_int: true,
                },
                ValueKind::Float(x) => ExprKind::Num {
                    value: x,
                    is_int: false,
                },
                _ => return Err(shape_error(span, "a number")),
            };
            Ok(Expr { kind, span })
        }
        Rule::string => Ok(Expr {
            kind: ExprKind::Str(unescape(string_body(&pair))),
            span,
        }),
        Rule::boolean => Ok(Expr {
            kind: ExprKind::Bool(pair.as_str() == "true"),
            span,
        }),
        Rule::dotted => Ok(Expr {
            kind: ExprKind::Ref(dotted(cx, pair)),
            span,
        }),
        Rule::call_expr => {
            let mut it = pair.into_inner();
            let callee = dotted(cx, next(&mut it, span, "a name")?);
            let mut args = Vec::new();
            for a in it {
                let aspan = cx.span(&a);
                let mut name = None;
                let mut value = None;
                for p in a.into_inner() {
                    match p.as_rule() {
                        Rule::ident => name = Some(cx.ident(&p)),
                        _ => value = Some(build_expr(cx, p)?),
                    }
                }
                let value = value.ok_or_else(|| shape_error(aspan, "an expression"))?;
                args.push(ExprArg { name, value });
            }
            Ok(Expr {
                kind: ExprKind::Call { callee, args },
                span,
            })
        }
        _ => Err(shape_error(span, "an expression")),
    }
}

fn dotted(cx: &Cx, pair: Pair<Rule>) -> Vec<Ident> {
    pair.into_inner().map(|p| cx.ident(&p)).collect()
}

fn build_params(cx: &Cx, pair: Pair<Rule>) -> R<Vec<ParamDecl>> {
    let mut params = Vec::new();
    for p in pair.into_inner() {
        let pspan = cx.span(&p);
        let mut it = p.into_inner();
        let name = cx.ident(&next(&mut it, pspan, "a name")?);
        let default = match it.next() {
            Some(e) => Some(build_expr(cx, e)?),
            None => None,
        };
        params.push(ParamDecl { name, default });
    }
    Ok(params)
}

fn build_adapter(cx: &Cx, pair: Pair<Rule>) -> R<AdapterDef> {
    let span = cx.span(&pair);
    let mut it = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_adapter);
    let name = cx.ident(&next(&mut it, span, "a name")?);
    let params = build_params(cx, next(&mut it, span, "`(`")?)?;
    let mut items = Vec::new();
    for p in it {
        let pspan = cx.span(&p);
        match p.as_rule() {
            Rule::tensor_decl => {
                let mut name = None;
                let mut shape = Vec::new();
                let mut trainable = false;
                let mut init = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::ident if name.is_none() => name = Some(cx.ident(&q)),
                        Rule::shape => shape = q.into_inner().map(|e| build_expr(cx, e)).collect::<R<_>>()?,
                        Rule::trainability => trainable = q.as_str() == "trainable",
                        Rule::ident | Rule::call => init = Some(build_call_or_ident(cx, q)?),
                        _ => {}
                    }
                }
                let name = name.ok_or_else(|| shape_error(pspan, "a name"))?;
                let init = init.ok_or_else(|| shape_error(pspan, "an init"))?;
                items.push(AdapterItem::Tensor(TensorDecl {
                    name,
                    shape,
                    trainable,
                    init,
                    span: pspan,
                }));
            }
            Rule::base_decl => {
                let residual = p.into_inner().any(|q| q.as_rule() == Rule::kw_residual);
                items.push(AdapterItem::Base { residual, span: pspan });
            }
            Rule::freeze_decl => {
                let mut tensor = None;
                let mut default = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::ident if tensor.is_none() => tensor = Some(cx.ident(&q)),
                        Rule::ident | Rule::call => default = Some(build_call_or_ident(cx, q)?),
                        _ => {}
                    }
                }
                let tensor = tensor.ok_or_else(|| shape_error(pspan, "a name"))?;
                items.push(AdapterItem::Freeze(FreezeDecl {
                    tensor,
                    default,
                    span: pspan,
                }));
            }
            Rule::path_decl => {
                let e = next(
                    &mut p.into_inner().filter(|q| q.as_rule() == Rule::expr),
                    pspan,
                    "an expression",
                )?;
                items.push(AdapterItem::Path(build_expr(cx, e)?));
            }
            _ => {}
        }
    }
    Ok(AdapterDef {
        name,
        params,
        items,
        span,
    })
}

fn build_model(cx: &Cx, pair: Pair<Rule>) -> R<ModelDef> {
    let span = cx.span(&pair);
    let mut it = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_model);
    let name = cx.ident(&next(&mut it, span, "a name")?);
    let params = build_params(cx, next(&mut it, span, "`(`")?)?;
    let items = it.map(|p| build_model_item(cx, p)).collect::<R<_>>()?;
    Ok(ModelDef {
        name,
        params,
        items,
        span,
    })
}

fn build_model_item(cx: &Cx, pair: Pair<Rule>) -> R<ModelItem> {
    let span = cx.span(&pair);
    match pair.as_rule() {
        Rule::module_decl => {
            let mut idents = Vec::new();
            let mut args = Vec::new();
            let mut hf = None;
            let mut tied = None;
            for q in pair.into_inner() {
                match q.as_rule() {
                    Rule::ident => idents.push(cx.ident(&q)),
                    Rule::expr => args.push(build_expr(cx, q)?),
                    Rule::string => hf = Some((unescape(string_body(&q)), cx.span(&q))),
                    Rule::tied => {
                        let mut t = q.into_inner().filter(|r| r.as_rule() == Rule::ident);
                        let target = cx.ident(&next(&mut t, span, "a name")?);
                        let cond = t.next().map(|c| cx.ident(&c));
                        tied = Some((target, cond));
                    }
                    _ => {}
                }
            }
            let mut idents = idents.into_iter();
            let name = idents.next().ok_or_else(|| shape_error(span, "a name"))?;
            let kind = idents.next().ok_or_else(|| shape_error(span, "a module kind"))?;
            let (hf_name, hf_span) = hf.ok_or_else(|| shape_error(span, "a string"))?;
            Ok(ModelItem::Module(ModuleDecl {
                name,
                kind,
                args,
                hf_name,
                hf_span,
                tied,
                span,
            }))
        }
        Rule::group_decl => {
            let mut it = pair.into_inner();
            let name = cx.ident(&next(&mut it, span, "a name")?);
            let mut count = None;
            let mut items = Vec::new();
            for q in it {
                match q.as_rule() {
                    Rule::expr => count = Some(build_expr(cx, q)?),
                    _ => items.push(build_model_item(cx, q)?),
                }
            }
            Ok(ModelItem::Group(GroupDecl {
                name,
                count,
                items,
                span,
            }))
        }
        Rule::forward_def => {
            let mut it = pair.into_inner().filter(|p| p.as_rule() != Rule::kw_forward);
            let input = cx.ident(&next(&mut it, span, "a name")?);
            let body = build_block(cx, next(&mut it, span, "`{`")?)?;
            Ok(ModelItem::Forward(ForwardDef { input, body, span }))
        }
        _ => Err(shape_error(span, "a model item")),
    }
}

fn build_block(cx: &Cx, pair: Pair<Rule>) -> R<Vec<Stmt>> {
    let mut out = Vec::new();
    for s in pair.into_inner() {
        let span = cx.span(&s);
        match s.as_rule() {
            Rule::assign_stmt => {
                let mut it = s.into_inner();
                let name = cx.ident(&next(&mut it, span, "a name")?);
                let value = build_expr(cx, next(&mut it, span, "an expression")?)?;
                out.push(Stmt::Assign { name, value, span });
            }
            Rule::return_stmt => {
                let e = next(
                    &mut s.into_inner().filter(|p| p.as_rule() == Rule::expr),
                    span,
                    "an expression",
                )?;
                out.push(Stmt::Return {
                    value: build_expr(cx, e)?,
                    span,
                });
            }
            Rule::for_stmt => {
                let mut it = s
                    .into_inner()
                    .filter(|p| !matches!(p.as_rule(), Rule::kw_for | Rule::kw_in));
                let var = cx.ident(&next(&mut it, span, "a name")?);
                let iter = dotted(cx, next(&mut it, span, "a name")?);
                let body = build_block(cx, next(&mut it, span, "`{`")?)?;
                out.push(Stmt::For { var, iter, body, span });
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_program_parses() {
        let f = parse_file("adapt llama2.attn.* rank auto(budget=8192) freeze_b linear(0.3)").unwrap();
        assert_eq!(f.items.len(), 1);
        let Item::Adapt(a) = &f.items[0] else {
            panic!("not an adapt")
        };
        assert_eq!(a.pattern.to_string(), "llama2.attn.*");
        assert_eq!(a.clauses.len(), 2);
        assert!(matches!(&a.clauses[0].kind, ClauseKind::Rank(RankSpec::Auto { args, .. }) if args.len() == 1));
    }

    #[test]
    fn patterns_round_trip() {
        for p in [
            "m.layers[0..15].attn.{q,v}",
            "m.**",
            "m.layers[3].*",
            "m.layers[0,2,4..6].mlp.down",
            "m.layers[*].attn.q",
        ] {
            let f = parse_file(&format!("adapt {p}")).unwrap();
            let Item::Adapt(a) = &f.items[0] else { panic!() };
            assert_eq!(a.pattern.to_string(), p);
        }
    }

    #[test]
    fn syntax_errors_name_tokens_and_resync() {
        let src = "adapt m.attn.q rnak 8\nadapt m.mlp.up rank\nuse tiny as t\n";
        let errs = parse_file(src).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].found, "`rnak`");
        assert!(errs[0].expected.iter().any(|e| e == "`rank`"), "{:?}", errs[0].expected);
        assert!(
            errs[1].expected.iter().any(|e| e == "a value" || e == "`auto`"),
            "{:?}",
            errs[1].expected
        );
    }

    #[test]
    fn unterminated_string_is_flagged() {
        let errs = parse_file("use \"models/x as m\n").unwrap_err();
        assert!(errs[0].unterminated_string);
    }

    #[test]
    fn expressions_have_precedence() {
        let f = parse_file("adapter t(r) { path 2 * B @ A @ x + C @ x }").unwrap();
        let Item::Adapter(a) = &f.items[0] else { panic!() };
        let AdapterItem::Path(e) = &a.items[0] else { panic!() };
        assert!(matches!(e.kind, ExprKind::Bin { op: BinOp::Add, .. }));
    }
}
