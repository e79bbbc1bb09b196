//! Chat templates: a conversation rendered the way the model was tuned to read it.
//!
//! The template is the Jinja source in the model folder's
//! `tokenizer_config.json` (`chat_template`: a string, or a list of named
//! templates of which `default` is taken), or a `chat_template.jinja` file
//! beside it (newer transformers write that). It is rendered with MiniJinja
//! configured as transformers configures Jinja2 for `apply_chat_template`:
//! `trim_blocks` and `lstrip_blocks` on, loop controls (`{% break %}`), the
//! Python string / dict / list methods templates call (`.strip()`,
//! `.items()`), and the two globals transformers adds, `raise_exception(msg)`
//! (the template refuses a conversation: an error here) and
//! `strftime_now(fmt)` (today's date, UTC, `%Y %m %d %B %b %H %M %S` only).
//! The context holds `messages`, `add_generation_prompt`, `bos_token` and
//! `eos_token` (their strings from tokenizer_config.json). The rendered text
//! names special tokens literally; it is encoded without adding special
//! tokens, as transformers does.
//!
//! Not supported: tools, documents and the `{% generation %}` extension
//! (assistant masks); templates that need them render as if none were given.

use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, context};
use serde_json::Value as Json;

use super::GenerateError;

/// File with the template and the special tokens' names.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// A template kept in a file of its own.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A model's chat template with the names of its special tokens.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    /// Where the template was read from.
    pub path: PathBuf,
    /// The Jinja source.
    pub source: String,
    /// `bos_token` as text ("" when unset).
    pub bos_token: String,
    /// `eos_token` as text ("" when unset).
    pub eos_token: String,
}

/// A special token's text in tokenizer_config.json: a string, or an
/// `AddedToken` object with `content`.
fn token_text(v: Option<&Json>) -> String {
    match v {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The template of the checkpoint folder `dir`, if it has one.
    pub fn for_folder(dir: &Path) -> Result<Option<Self>, GenerateError> {
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config: Json = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|source| GenerateError::Io {
                path: config_path.clone(),
                source,
            })?;
            serde_json::from_str(&text).map_err(|e| GenerateError::ChatTemplate {
                path: config_path.clone(),
                message: format!("not valid JSON: {e}"),
            })?
        } else {
            Json::Null
        };
        let from_config = match config.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .or_else(|| named.first())
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string),
            _ => None,
        };
        let jinja_path = dir.join(CHAT_TEMPLATE_FILE);
        let (path, source) = match from_config {
            Some(s) => (config_path, s),
            None if jinja_path.is_file() => {
                let s = std::fs::read_to_string(&jinja_path).map_err(|source| GenerateError::Io {
                    path: jinja_path.clone(),
                    source,
                })?;
                (jinja_path, s)
            }
            None => return Ok(None),
        };
        Ok(Some(ChatTemplate {
            path,
            source,
            bos_token: token_text(config.get("bos_token")),
            eos_token: token_text(config.get("eos_token")),
        }))
    }

    /// The conversation as text, ending with the assistant's turn opened when
    /// `add_generation_prompt` is set.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, GenerateError> {
        let fail = |e: Error| GenerateError::ChatTemplate {
            path: self.path.clone(),
            message: describe(&e),
        };
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(fail)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        let template = env.template_from_str(&self.source).map_err(fail)?;
        let messages: minijinja::Value = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(fail)
    }
}

/// A MiniJinja error with its causes, on one line.
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Today's date and time (UTC) in a strftime subset: `%Y %m %d %B %b %H %M %S %%`.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(fmt, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `fmt` for the UTC time `secs` after the Unix epoch (see [`strftime_now`]).
fn strftime(fmt: &str, secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate {
            path: PathBuf::from("tokenizer_config.json"),
            source: source.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    #[test]
    fn blocks_trim_like_transformers_and_python_methods_work() {
        // trim_blocks / lstrip_blocks: the block lines leave no whitespace behind
        let t = template(
            "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() }}]{{ eos_token }}\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}>{% endif %}",
        );
        let text = t.render(&[Message::user("  hi  ")], true).unwrap();
        assert_eq!(text, "[hi]</s>\n>");
    }

    #[test]
    fn raise_exception_is_an_error_and_loop_controls_parse() {
        let t =
            template("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}");
        assert_eq!(t.render(&[Message::user("a"), Message::user("b")], false).unwrap(), "a");
        let t = template("{{ raise_exception('only user turns') }}");
        let e = t.render(&[Message::user("a")], true).unwrap_err();
        assert!(e.to_string().contains("only user turns"), "{e}");
        let t = template("{% for %}");
        assert!(t.render(&[], true).is_err());
    }

    #[test]
    fn strftime_subset() {
        // 2024-02-29 13:05:09 UTC
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %b %B %%x %q", 1_709_211_909),
            "2024-02-29 13:05:09 Feb February %x %q"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
    }
}
