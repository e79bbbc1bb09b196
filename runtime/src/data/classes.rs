//! Classification data: TSV, CSV or JSONL examples of a text (or a pair) and a label, tokenized for an encoder.
//!
//! - `.tsv`: a header row, then one example per line, fields separated by
//!   tabs, taken verbatim (no quoting: a `"` is a character like any other).
//! - `.csv`: a header row, then comma-separated fields; a field may be
//!   quoted with `"` (a doubled `""` inside is one quote), quoted fields may
//!   hold commas but not line breaks.
//! - `.jsonl`: one object per line.
//!
//! The columns (keys) are `text`, or `text_a` and `text_b` for pairs
//! (`sentence`, `sentence1`/`sentence2` are accepted as GLUE names them),
//! and `label`: an integer in `0 .. labels`. Each text is encoded with the
//! tokenizer's special tokens (`[CLS] a [SEP] b [SEP]`), truncated to `seq`
//! tokens longest-first, with its token types; the batcher pads it.

use std::path::Path;

use serde_json::Value;

use super::error::DataError;
use super::tokenizer::Tokenizer;

/// One example: token ids with their segment ids, and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassExample {
    /// Token ids, special tokens included, at most `seq`.
    pub ids: Vec<u32>,
    /// Segment (token type) ids, one per id.
    pub type_ids: Vec<u32>,
    /// The class, in `0 .. labels`.
    pub label: i64,
    /// Where it comes from: its 1-based line in the data file (0 when not from a file).
    pub line: usize,
}

/// The fields of one example before tokenizing.
struct Raw {
    line: usize,
    a: String,
    b: Option<String>,
    label: Option<String>,
}

const TEXT: &[&str] = &["text", "sentence", "text_a", "sentence1"];
const PAIR: &[&str] = &["text_b", "sentence2"];

/// Reads and tokenizes a classification file (format by extension).
pub fn load(path: &Path, tokenizer: &Tokenizer, seq: usize, labels: usize) -> Result<Vec<ClassExample>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let fail = |line: usize, problem: String| DataError::ClassExample {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let raws = match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => jsonl(text, &fail)?,
        Some("tsv") => table(text, Sep::Tab, &fail)?,
        Some("csv") => table(text, Sep::Comma, &fail)?,
        _ => {
            return Err(fail(
                0,
                "a classification head reads `.tsv`, `.csv` or `.jsonl` data".into(),
            ));
        }
    };
    let mut out = Vec::with_capacity(raws.len());
    for r in raws {
        let label = match r.label.as_deref().map(str::trim) {
            None | Some("") => return Err(fail(r.line, "no `label`".into())),
            Some(s) => match s.parse::<i64>() {
                Ok(l) if (0..labels as i64).contains(&l) => l,
                _ => {
                    return Err(fail(
                        r.line,
                        format!("label `{s}` is not one of the classes 0 .. {}", labels - 1),
                    ));
                }
            },
        };
        let (ids, type_ids) = tokenizer
            .encode_sequence(&r.a, r.b.as_deref(), seq)
            .map_err(|m| fail(r.line, format!("cannot tokenize: {m}")))?;
        if ids.is_empty() {
            return Err(fail(r.line, "the text encodes to no tokens".into()));
        }
        out.push(ClassExample {
            ids,
            type_ids,
            label,
            line: r.line,
        });
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

fn jsonl(text: &str, fail: &dyn Fn(usize, String) -> DataError) -> Result<Vec<Raw>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| fail(line_no, format!("invalid JSON: {e}")))?;
        let field = |names: &[&str]| names.iter().find_map(|k| v.get(*k));
        let Some(Value::String(a)) = field(TEXT) else {
            return Err(fail(line_no, "no `text` (or `text_a`) string".into()));
        };
        let b = match field(PAIR) {
            None | Some(Value::Null) => None,
            Some(Value::String(b)) => Some(b.clone()),
            Some(_) => return Err(fail(line_no, "`text_b` is not a string".into())),
        };
        let label = match v.get("label") {
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        out.push(Raw {
            line: line_no,
            a: a.clone(),
            b,
            label,
        });
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Sep {
    Tab,
    Comma,
}

/// The fields of one line: tabs verbatim; CSV with `"` quoting.
fn fields(line: &str, sep: Sep) -> Result<Vec<String>, String> {
    match sep {
        Sep::Tab => Ok(line.split('\t').map(str::to_owned).collect()),
        Sep::Comma => {
            let mut out = Vec::new();
            let mut cur = String::new();
            let mut chars = line.chars().peekable();
            let mut quoted = false;
            let mut at_start = true;
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (false, '"') if at_start => quoted = true,
                    (true, '"') if chars.peek() == Some(&'"') => {
                        cur.push('"');
                        chars.next();
                    }
                    (true, '"') => quoted = false,
                    (false, ',') => {
                        out.push(std::mem::take(&mut cur));
                        at_start = true;
                        continue;
                    }
                    (_, c) => cur.push(c),
                }
                at_start = false;
            }
            if quoted {
                return Err("a quoted field is not closed on its line".into());
            }
            out.push(cur);
            Ok(out)
        }
    }
}

fn table(text: &str, sep: Sep, fail: &dyn Fn(usize, String) -> DataError) -> Result<Vec<Raw>, DataError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((h, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let header: Vec<String> = fields(header, sep)
        .map_err(|m| fail(h + 1, m))?
        .into_iter()
        .map(|f| f.trim().to_lowercase())
        .collect();
    let col = |names: &[&str]| header.iter().position(|f| names.contains(&f.as_str()));
    let (Some(ta), Some(tl)) = (col(TEXT), col(&["label"])) else {
        return Err(fail(
            h + 1,
            format!(
                "the header names {:?}; it needs `text` (or `text_a`) and `label` columns",
                header
            ),
        ));
    };
    let tb = col(PAIR);
    let mut out = Vec::new();
    for (i, line) in lines {
        let f = fields(line, sep).map_err(|m| fail(i + 1, m))?;
        if f.len() != header.len() {
            return Err(fail(
                i + 1,
                format!("{} fields, the header has {}", f.len(), header.len()),
            ));
        }
        out.push(Raw {
            line: i + 1,
            a: f[ta].clone(),
            b: tb.map(|j| f[j].clone()),
            label: Some(f[tl].clone()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_follow_quoting() {
        assert_eq!(
            fields(r#"a,"b, c","say ""hi""""#, Sep::Comma).unwrap(),
            ["a", "b, c", "say \"hi\""]
        );
        assert_eq!(fields("a\tb\"c\t", Sep::Tab).unwrap(), ["a", "b\"c", ""]);
        assert!(fields(r#"a,"b"#, Sep::Comma).is_err());
    }

    #[test]
    fn tables_and_jsonl_give_the_same_examples() {
        let dir = tempfile::tempdir().unwrap();
        let tok = Tokenizer::bytes();
        let tsv = dir.path().join("d.tsv");
        std::fs::write(&tsv, "text\tlabel\r\nab\t1\r\n\r\ncd\t0\r\n").unwrap();
        let csv = dir.path().join("d.csv");
        std::fs::write(&csv, "label,text\n1,\"ab\"\n0,cd\n").unwrap();
        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"ab\", \"label\": 1}\n{\"text\": \"cd\", \"label\": 0}\n",
        )
        .unwrap();
        let want = vec![
            ClassExample {
                ids: vec![97, 98],
                type_ids: vec![0, 0],
                label: 1,
                line: 0,
            },
            ClassExample {
                ids: vec![99, 100],
                type_ids: vec![0, 0],
                label: 0,
                line: 0,
            },
        ];
        // lines: the TSV has a blank line between its rows
        for (p, lines) in [(&tsv, [2, 4]), (&csv, [2, 3]), (&jsonl, [1, 2])] {
            let got = load(p, &tok, 8, 2).unwrap();
            let mut want = want.clone();
            want[0].line = lines[0];
            want[1].line = lines[1];
            assert_eq!(got, want, "{}", p.display());
        }
    }

    #[test]
    fn bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let tok = Tokenizer::bytes();
        let p = dir.path().join("d.tsv");
        for (body, line, what) in [
            ("text\tlabel\nab\t2\n", 2, "not one of the classes"),
            ("text\tlabel\nab\n", 2, "1 fields"),
            ("sentence\tscore\nab\t1\n", 1, "needs `text`"),
            ("text\tlabel\nab\t\n", 2, "no `label`"),
        ] {
            std::fs::write(&p, body).unwrap();
            match load(&p, &tok, 8, 2) {
                Err(DataError::ClassExample { line: l, problem, .. }) => {
                    assert_eq!(l, line, "{body:?}");
                    assert!(problem.contains(what), "{problem}");
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }
}
