//! Errors of loading, tokenizing and batching training data; each names the file
//! (and line, for JSONL) and says what to do ([`DataError::hint`]).

use lamda_compiler::diag::Code;
use std::path::PathBuf;

use crate::checkpoint::CheckpointError;

/// Everything that can go wrong while turning a data file into batches.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An operating-system error while reading a file.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A text file (or JSONL line) is not UTF-8 but a tokenizer needs text.
    #[error("`{}` is not valid UTF-8 (line {line})", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
    },
    /// tokenizer.json could not be loaded.
    #[error("cannot load tokenizer `{}`: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What the tokenizers library said.
        message: String,
    },
    /// The tokenizer failed on some text.
    #[error("tokenizing `{}` (line {line}) failed: {message}", path.display())]
    Encode {
        /// The data file.
        path: PathBuf,
        /// 1-based line (1 for a whole text file).
        line: usize,
        /// What the tokenizers library said.
        message: String,
    },
    /// A JSONL line is not valid JSON.
    #[error("`{}` line {line}, column {column}: invalid JSON: {message}", path.display())]
    JsonlSyntax {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// A JSONL line is valid JSON but not an example.
    #[error("`{}` line {line}: {problem}", path.display())]
    JsonlExample {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong: a missing or mistyped field, or both forms at once.
        problem: String,
    },
    /// A classification example (TSV/CSV row or JSONL line) without its text,
    /// or with a label that is not one of the head's classes.
    #[error("`{}` line {line}: {problem}", path.display())]
    ClassExample {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// A `messages` line cannot be rendered: the model has no chat template,
    /// the template fails, or it does not render the conversation turn by turn.
    #[error("`{}` line {line}: {problem}", path.display())]
    Chat {
        /// The data file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What went wrong.
        problem: String,
        /// `lamda::generate::no_chat_template` or `lamda::generate::chat_template`.
        code: Code,
    },
    /// A data file yields no example or no token at all.
    #[error("`{}` holds no training data", path.display())]
    Empty {
        /// The data file.
        path: PathBuf,
    },
    /// A text file has fewer tokens than one sequence.
    #[error("`{}` has {tokens} tokens, fewer than one sequence of {seq}", path.display())]
    TooShort {
        /// The data file.
        path: PathBuf,
        /// Tokens in the file.
        tokens: usize,
        /// The sequence length asked for.
        seq: usize,
    },
    /// Reading a token-id safetensors file failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A token-id safetensors file has the wrong tensors or shapes.
    #[error("`{}`: {problem}", path.display())]
    IdsLayout {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A token id is outside the model's vocabulary (or negative).
    #[error("`{}`: token id {token} is outside the model's vocabulary of {vocab_size}", path.display())]
    TokenOutOfVocab {
        /// The data file.
        path: PathBuf,
        /// The offending id (the largest one, or a negative one).
        token: i64,
        /// The model's vocabulary size.
        vocab_size: usize,
        /// Whether ids are raw bytes (no tokenizer.json).
        byte_level: bool,
    },
    /// A label is negative but not -100 (the ignore index).
    #[error("`{}`: label {label} at row {row}, position {pos} is negative but not -100", path.display())]
    BadLabel {
        /// The data file.
        path: PathBuf,
        /// The label.
        label: i64,
        /// Row (0-based).
        row: usize,
        /// Position (0-based).
        pos: usize,
    },
    /// `seq` of the run differs from the rows of a token-id file.
    #[error("`{}` has rows of {file_seq} tokens but the run asks for seq {seq}", path.display())]
    SeqMismatch {
        /// The data file.
        path: PathBuf,
        /// Row length in the file.
        file_seq: usize,
        /// The sequence length asked for.
        seq: usize,
    },
    /// `split F` would leave one part of the data empty.
    #[error("`{}`: {problem}", path.display())]
    Split {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `seq` or `batch` is zero.
    #[error("invalid batching: {problem}")]
    BadBatching {
        /// What is wrong.
        problem: String,
    },
    /// A saved batcher state does not belong to this data and these settings.
    #[error("cannot resume the data order: the saved state has {field} = {saved}, this run has {current}")]
    StateMismatch {
        /// Which setting differs.
        field: &'static str,
        /// Its value in the saved state.
        saved: String,
        /// Its value now.
        current: String,
    },
}

impl DataError {
    /// A stable diagnostic code, `lamda::data::<kind>`.
    pub fn code(&self) -> Code {
        match self {
            Self::Io { .. } => Code::DataIo,
            Self::NotUtf8 { .. } => Code::DataNotUtf8,
            Self::Tokenizer { .. } => Code::DataTokenizer,
            Self::Encode { .. } => Code::DataEncode,
            Self::JsonlSyntax { .. } => Code::DataJsonlSyntax,
            Self::JsonlExample { .. } => Code::DataJsonlExample,
            Self::ClassExample { .. } => Code::DataClassExample,
            Self::Chat { code, .. } => *code,
            Self::Empty { .. } => Code::DataEmpty,
            Self::TooShort { .. } => Code::DataTooShort,
            Self::Checkpoint(e) => e.code(),
            Self::IdsLayout { .. } => Code::DataIdsLayout,
            Self::TokenOutOfVocab { .. } => Code::DataTokenOutOfVocab,
            Self::BadLabel { .. } => Code::DataBadLabel,
            Self::SeqMismatch { .. } => Code::DataSeqMismatch,
            Self::BadBatching { .. } => Code::DataBadBatching,
            Self::Split { .. } => Code::DataSplit,
            Self::StateMismatch { .. } => Code::DataStateMismatch,
        }
    }

    /// The help line: what the user can do about this error.
    pub fn hint(&self) -> String {
        match self {
            Self::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => {
                    "check the `data` path; it is resolved relative to the .lamda file".into()
                }
                _ => "check that the file is readable".into(),
            },
            Self::NotUtf8 { .. } => "re-encode the file as UTF-8 (a tokenizer.json works on text)".into(),
            Self::Tokenizer { .. } => {
                "tokenizer.json must be a Hugging Face `tokenizers` file; delete it to train on bytes".into()
            }
            Self::Encode { .. } => "check the text on that line".into(),
            Self::JsonlSyntax { .. } => "each line must be one JSON object, e.g. {\"text\": \"...\"}".into(),
            Self::JsonlExample { .. } => "each line needs either `text`, or `prompt` and \
                 `completion` (loss on the completion only), as strings, or `messages` (a chat: \
                 loss on the assistant's turns only)"
                .into(),
            Self::Chat {
                code: Code::GenerateNoChatTemplate,
                ..
            } => "`messages` lines need the model's chat template in its tokenizer_config.json (`lamdac convert` copies a GGUF's); or write the lines as `prompt` and `completion`".into(),
            Self::Chat { .. } => "write the lines as `prompt` and `completion` instead of `messages`".into(),
            Self::Empty { .. } => "add training text to the file".into(),
            Self::TooShort { .. } => "lower `seq` or add more text".into(),
            Self::Checkpoint(e) => e.hint(),
            Self::IdsLayout { .. } => "a token-id file holds `input_ids` and optionally `labels`, \
                 both integer tensors of shape [rows, seq]"
                .into(),
            Self::TokenOutOfVocab { byte_level: true, .. } => {
                "without a tokenizer.json every byte is a token (ids 0..=255), which needs a \
                 vocabulary of at least 256; add the model's tokenizer.json to its folder"
                    .into()
            }
            Self::TokenOutOfVocab { .. } => {
                "the data was tokenized for another model; re-tokenize it with this model's tokenizer".into()
            }
            Self::BadLabel { .. } => "use -100 for positions without loss".into(),
            Self::ClassExample { .. } => "classification data: a TSV or CSV file with a header naming `text` \
                 (or `text_a` and `text_b`) and `label`, or JSONL lines with those fields; labels are the \
                 integers 0 .. labels-1 of `head classify(labels = N)`"
                .into(),
            Self::SeqMismatch { file_seq, .. } => format!("set `seq {file_seq}` in the train block"),
            Self::BadBatching { .. } => "`seq` and `batch` must be at least 1".into(),
            Self::Split { .. } => {
                "add data, use a smaller `split`, or name a held-out file with `eval_data \"FILE\"`".into()
            }
            Self::StateMismatch { .. } => "resume with the same data file and the same `seq`, \
                 `batch` and `seed`, or start a fresh run"
                .into(),
        }
    }
}
