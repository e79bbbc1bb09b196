//! Diagnostics: coded problems with spans as data, rendered with miette at the edge.
//!
//! Every problem the compiler reports has a stable [`Code`]; the list of codes
//! below is the single source of spec/errors.md (a test checks that every code
//! is documented there and exercised by a UI test). A [`Diagnostic`] holds the
//! facts (message, labelled spans, help); [`render`] turns a batch of them into
//! the text a user sees.

use std::fmt;
use std::sync::Arc;

use miette::{
    GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan,
    SpanContents,
};

use crate::syntax::ast::Span;

/// Index of a source file in a [`SourceMap`].
pub type FileId = usize;

/// One source text: the user's file or an embedded stdlib file.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<str>,
}

/// Every source file of a compilation.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    pub files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<Arc<str>>) -> FileId {
        self.files.push(SourceFile {
            name: name.into(),
            text: text.into(),
        });
        self.files.len() - 1
    }
    pub fn get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id)
    }
    /// 1-based line and column (in characters) of a byte offset; an offset
    /// inside a character counts as that character.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        let Some(f) = self.get(id) else { return (0, 0) };
        let before = &f.text[..f.text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    Advice,
}

macro_rules! codes {
    (
        check: { $( $cv:ident = $cc:literal : $ct:literal ),* $(,)? }
        run: { $( $rv:ident = $rc:literal : $rt:literal ),* $(,)? }
    ) => {
        /// The stable code of every problem lamdac reports: the one registry
        /// of codes, for the compiler, the runtime and the CLI alike.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $( $cv, )* $( $rv, )* }
        impl Code {
            /// Every code, in documentation order.
            pub const ALL: &'static [Code] = &[ $( Code::$cv, )* $( Code::$rv, )* ];
            /// The codes `lamdac check` reports (each has a UI case in tests/ui/).
            pub const CHECK: &'static [Code] = &[ $( Code::$cv ),* ];
            /// The codes only the other commands report (train, export, merge,
            /// convert, plan, emit, bench, generate, eval; each is asserted by a test in tests/
            /// or runtime/tests/).
            pub const RUN: &'static [Code] = &[ $( Code::$rv ),* ];
            /// The code as users see it: `lamda::resolve::no_match`.
            pub fn as_str(self) -> &'static str {
                match self { $( Code::$cv => $cc, )* $( Code::$rv => $rc, )* }
            }
            /// A one-line description.
            pub fn title(self) -> &'static str {
                match self { $( Code::$cv => $ct, )* $( Code::$rv => $rt, )* }
            }
        }
    };
}

codes! {
    check: {
    // syntax
    SyntaxUnexpected = "lamda::syntax::unexpected": "the parser met a token it did not expect",
    SyntaxUnterminatedString = "lamda::syntax::unterminated_string": "a string literal has no closing quote",
    SyntaxNotUtf8 = "lamda::syntax::not_utf8": "a spec file is not UTF-8 text",
    // definitions (adapters, models, presets)
    DefDuplicate = "lamda::def::duplicate": "two definitions share a name",
    DefShadowsStdlib = "lamda::def::shadows_stdlib": "a definition in the file replaces one of the stdlib",
    AdapterUndeclaredTensor = "lamda::adapter::undeclared_tensor": "an adapter path or freeze names a tensor that is not declared",
    AdapterUnknownName = "lamda::adapter::unknown_name": "an adapter shape or path uses a name that is neither a parameter nor in/out/r/x",
    AdapterShapeMismatch = "lamda::adapter::shape_mismatch": "shapes do not agree along an adapter path",
    AdapterNotLinear = "lamda::adapter::not_linear": "an adapter path is not linear in x",
    AdapterUnknownInit = "lamda::adapter::unknown_init": "an adapter tensor has an unknown initialiser",
    AdapterInitShape = "lamda::adapter::init_shape": "an initialiser cannot produce the declared shape",
    AdapterDuplicateTensor = "lamda::adapter::duplicate_tensor": "an adapter declares a tensor twice",
    AdapterMissingPath = "lamda::adapter::missing_path": "an adapter has no path, or more than one",
    AdapterMissingBase = "lamda::adapter::missing_base": "an adapter says neither `base keep` nor `base residual`, or says both",
    AdapterFreezeNotColumns = "lamda::adapter::freeze_not_columns": "a column-frozen tensor must be trainable with r columns",
    AdapterUnusedTensor = "lamda::adapter::unused_tensor": "an adapter declares a tensor its path never uses",
    AdapterBadParam = "lamda::adapter::bad_param": "an adapter parameter list is malformed (r missing, or a reserved name)",
    ModelBadDecl = "lamda::model::bad_decl": "a model family definition is malformed",
    ModelBadDataflow = "lamda::model::bad_dataflow": "a model's forward block uses an unknown name or builtin",
    ModelTooLarge = "lamda::model::too_large": "a model's sizes are beyond any real model's (they would overflow size arithmetic or exhaust memory)",
    // use
    UseUnknownModel = "lamda::use::unknown_model": "a model name is neither a preset nor an alias in scope",
    UseFamilyNotPreset = "lamda::use::family_not_preset": "a model family was named where a preset is needed",
    UseMissingAlias = "lamda::use::missing_alias": "`use \"path\"` needs `as NAME`",
    UseDuplicateAlias = "lamda::use::duplicate_alias": "two `use` statements bind the same name",
    UseMultipleModels = "lamda::use::multiple_models": "the rules of one file name more than one model",
    UseNoModel = "lamda::use::no_model": "the file has no adapt rule, so nothing would train",
    // checkpoint folders and their config.json (`check` and `train` share the parser)
    CheckpointFolderMissing = "lamda::checkpoint::folder_missing": "a checkpoint folder does not exist",
    CheckpointNotAFolder = "lamda::checkpoint::not_a_folder": "a checkpoint path names a file, not a folder",
    CheckpointConfigMissing = "lamda::checkpoint::config_missing": "a checkpoint folder has no config.json",
    CheckpointIo = "lamda::checkpoint::io": "a checkpoint file exists but cannot be read",
    CheckpointInvalidJson = "lamda::checkpoint::invalid_json": "a checkpoint's JSON file (config.json, an index) is not valid JSON",
    CheckpointMissingKey = "lamda::checkpoint::missing_key": "config.json lacks a key the model needs",
    CheckpointWrongType = "lamda::checkpoint::wrong_type": "a key of config.json has the wrong JSON type",
    CheckpointInvalidValue = "lamda::checkpoint::invalid_value": "a key of config.json has a value no model can have",
    CheckpointUnsupportedArchitecture = "lamda::checkpoint::unsupported_architecture": "config.json describes a model lamdac has no family for",
    CheckpointUnsupportedRopeScaling = "lamda::checkpoint::unsupported_rope_scaling": "config.json asks for RoPE scaling lamdac does not implement",
    CheckpointUnsupportedFeature = "lamda::checkpoint::unsupported_feature": "config.json turns on a block feature lamdac does not implement (biases, another activation, quantization)",
    PresetBadArgs = "lamda::preset::bad_args": "a preset passes arguments its family does not take, misses one, or one has the wrong type",
    // patterns and rules
    PatternNoMatch = "lamda::pattern::no_match": "a pattern matches no module",
    PatternIndexOutOfRange = "lamda::pattern::index_out_of_range": "a pattern indexes a group past its end",
    PatternBadRange = "lamda::pattern::bad_range": "an index range runs backwards",
    PatternNotLinear = "lamda::pattern::not_linear": "a pattern matches modules, but none of them is a linear layer",
    ExcludeUnused = "lamda::exclude::unused": "an `exclude` removes no module that a rule adapts",
    AdaptOverridden = "lamda::adapt::overridden": "a later rule overrides an earlier one for some modules",
    AdaptFullyOverridden = "lamda::adapt::fully_overridden": "every module of a rule is overridden or excluded",
    AdaptDuplicateClause = "lamda::adapt::duplicate_clause": "a clause is given twice in one rule",
    AdaptUnknownMethod = "lamda::adapt::unknown_method": "`with` names no adapter method",
    AdaptUnknownArg = "lamda::adapt::unknown_arg": "an argument names no parameter",
    AdaptBadArg = "lamda::adapt::bad_arg": "an argument has the wrong type or is out of range",
    AdaptFreezeWithoutB = "lamda::adapt::freeze_without_b": "`freeze_b` on a method with no column-frozen B",
    AdaptNoGradient = "lamda::adapt::no_gradient": "with this freeze schedule a trainable tensor can never receive gradient",
    RankZero = "lamda::rank::zero": "a rank must be at least 1",
    RankTooLarge = "lamda::rank::too_large": "a rank exceeds min(d_in, d_out) of a module",
    RankInfeasibleBudget = "lamda::rank::infeasible_budget": "a rank budget is smaller than the number of modules",
    RankBadBounds = "lamda::rank::bad_bounds": "`rank auto` bounds are inconsistent",
    RankNotInteger = "lamda::rank::not_integer": "a rank must be a whole number",
    ScheduleUnknown = "lamda::schedule::unknown": "an unknown freeze schedule",
    ScheduleFraction = "lamda::schedule::fraction": "a schedule fraction outside (0, 1]",
    // train block
    TrainUnknownKey = "lamda::train::unknown_key": "an unknown setting in a train block",
    TrainDuplicateKey = "lamda::train::duplicate_key": "a train setting is given twice",
    TrainBadValue = "lamda::train::bad_value": "a train setting has the wrong type or is out of range",
    TrainDuplicateBlock = "lamda::train::duplicate_block": "a file has more than one train block",
    TrainDataNotFound = "lamda::train::data_not_found": "the data file does not exist",
    TrainDataNotAFile = "lamda::train::data_not_a_file": "the data path names a folder, not a file",
    }
    run: {
    // the commands
    Io = "lamda::io": "a file cannot be read or written for a reason outside the input (a missing spec, a full disk, an output folder that cannot be created); exit 2",
    Spec = "lamda::spec": "a spec given to the library's training session has errors (the CLI reports them with their own codes)",
    Compile = "lamda::compile": "the compiler pipeline failed on a checked spec (an internal error, or weights that do not fit the plan)",
    Emit = "lamda::emit": "generating kernel source (`lamdac emit --target clif|cuda`) failed",
    // data
    DataIo = "lamda::data::io": "the data file exists but cannot be read",
    DataNotUtf8 = "lamda::data::not_utf8": "text data for a tokenizer.json is not UTF-8",
    DataTokenizer = "lamda::data::tokenizer": "the checkpoint's tokenizer.json does not load",
    DataEncode = "lamda::data::encode": "the tokenizer cannot encode a line of the data",
    DataJsonlSyntax = "lamda::data::jsonl_syntax": "a JSONL line is not a JSON object",
    DataJsonlExample = "lamda::data::jsonl_example": "a JSONL line has neither `text` nor `prompt` and `completion` strings",
    DataEmpty = "lamda::data::empty": "the data file holds no tokens",
    DataTooShort = "lamda::data::too_short": "the data has fewer tokens than one sequence",
    DataIdsLayout = "lamda::data::ids_layout": "a token-id file lacks `input_ids`, or its tensors have the wrong type or shape",
    DataTokenOutOfVocab = "lamda::data::token_out_of_vocab": "a token id is outside the model's vocabulary",
    DataBadLabel = "lamda::data::bad_label": "a label is neither a token id nor -100",
    DataClassExample = "lamda::data::class_example": "a classification example lacks its text, or its label is not one of the head's classes",
    DataSeqMismatch = "lamda::data::seq_mismatch": "the rows of a token-id file are not `seq` long",
    DataBadBatching = "lamda::data::bad_batching": "batch or seq is zero, or too large for the data",
    DataStateMismatch = "lamda::data::state_mismatch": "a checkpoint's data position was saved for other data or batching",
    DataSplit = "lamda::data::split": "`split F` would leave no data to train on or none held out",
    // checkpoint weights
    CheckpointNoWeights = "lamda::checkpoint::no_weights": "a checkpoint folder has neither model.safetensors nor an index of shards",
    CheckpointInvalidIndex = "lamda::checkpoint::invalid_index": "model.safetensors.index.json is not a valid index",
    CheckpointMissingShard = "lamda::checkpoint::missing_shard": "the index names a shard file that does not exist",
    CheckpointMissingTensor = "lamda::checkpoint::missing_tensor": "a tensor the config implies is not in the checkpoint",
    CheckpointWrongShape = "lamda::checkpoint::wrong_shape": "a tensor's shape differs from the one the config implies",
    CheckpointWrongRank = "lamda::checkpoint::wrong_rank": "a tensor has another number of dimensions than asked for",
    CheckpointUnsupportedDtype = "lamda::checkpoint::unsupported_dtype": "a tensor's dtype cannot be read as float32",
    CheckpointTruncated = "lamda::checkpoint::truncated": "a safetensors file is shorter than its header says",
    CheckpointCorrupt = "lamda::checkpoint::corrupt": "a safetensors file's header or data is damaged",
    CheckpointWriteShape = "lamda::checkpoint::write_shape": "internal: a tensor to write does not match its shape",
    CheckpointNotCausalLm = "lamda::checkpoint::not_causal_lm": "a command that generates text was given an encoder (BERT) checkpoint",
    // GGUF conversion
    GgufIo = "lamda::gguf::io": "the GGUF file exists but cannot be read",
    GgufBadMagic = "lamda::gguf::bad_magic": "the file is not a GGUF file",
    GgufUnsupportedVersion = "lamda::gguf::unsupported_version": "a GGUF version (or byte order) lamdac does not read",
    GgufTruncated = "lamda::gguf::truncated": "the GGUF file is cut off",
    GgufCorrupt = "lamda::gguf::corrupt": "the GGUF header or metadata is damaged",
    GgufTensorOutOfBounds = "lamda::gguf::tensor_out_of_bounds": "a GGUF tensor's data lies outside the file",
    GgufUnknownDtype = "lamda::gguf::unknown_dtype": "a GGUF tensor type lamdac does not know",
    GgufUnsupportedDtype = "lamda::gguf::unsupported_dtype": "a GGUF tensor type lamdac does not dequantize",
    GgufMissingMetadata = "lamda::gguf::missing_metadata": "a metadata key a Llama GGUF sets is missing",
    GgufBadMetadata = "lamda::gguf::bad_metadata": "a metadata value has the wrong type or is out of range",
    GgufUnsupportedArchitecture = "lamda::gguf::unsupported_architecture": "the GGUF holds another architecture than Llama",
    GgufUnsupported = "lamda::gguf::unsupported": "the GGUF uses a feature lamdac does not implement (RoPE scaling, say)",
    GgufMissingTensor = "lamda::gguf::missing_tensor": "a tensor a Llama has is not in the GGUF",
    GgufUnexpectedTensor = "lamda::gguf::unexpected_tensor": "the GGUF holds a tensor a Llama does not have",
    GgufWrongShape = "lamda::gguf::wrong_shape": "a GGUF tensor's shape contradicts the metadata",
    GgufTokenizer = "lamda::gguf::tokenizer": "the tokenizer built from the GGUF vocabulary does not load",
    // export and merge
    ExportNoAdapter = "lamda::export::no_adapter": "the run folder has no adapter.safetensors",
    ExportNoWeights = "lamda::export::no_weights": "`merge` on a stdlib preset: there are no weights to merge into",
    ExportNotAnAdapter = "lamda::export::not_an_adapter": "adapter.safetensors was not written by lamdac train",
    ExportNotLora = "lamda::export::not_lora": "a method whose update has rank above r has no exact LoRA form",
    ExportLinalg = "lamda::export::linalg": "computing an exported factor failed (non-finite values)",
    ExportMeanPool = "lamda::export::mean_pool": "a classifier with `pool = mean` has no BertForSequenceClassification form (it pools the CLS token through its pooler)",
    ExportHeadOnly = "lamda::export::head_only": "a head-only run has no adapted module to export as a PEFT LoRA adapter (`merge` writes its classifier)",
    // training
    TrainNoWeights = "lamda::train::no_weights": "`train` on a stdlib preset: there are no weights to train",
    TrainNoData = "lamda::train::no_data": "the train block names no data",
    TrainDevice = "lamda::train::device": "the asked-for device is not there (no GPU, no CUDA library)",
    TrainDeviceUnsupported = "lamda::train::device_unsupported": "the asked-for device has no kernels for this model yet (encoders on CUDA)",
    TrainShapesOnly = "lamda::train::shapes_only": "`train` on a preset that gives module shapes only (`shapes_only = true`, e.g. deberta_v3_base)",
    TrainPrecision = "lamda::train::precision": "a storage precision the device does not run (bf16 on the CPU)",
    TrainOutOfMemory = "lamda::train::out_of_memory": "a training step needs more memory than the machine has",
    TrainInit = "lamda::train::init": "initialising an adapter from the weights failed",
    TrainNonFinite = "lamda::train::non_finite": "the loss became NaN or infinite",
    TrainCollapsed = "lamda::train::collapsed": "the gradient is exactly zero step after step: the model has collapsed",
    TrainStep = "lamda::train::step": "a training step failed to run (an internal error)",
    // generate and eval
    GenerateNoWeights = "lamda::generate::no_weights": "`generate` or `eval` on a stdlib preset: there are no weights to run",
    GenerateNoTokenizer = "lamda::generate::no_tokenizer": "the model folder has no tokenizer.json and its vocabulary is not the 256 bytes",
    GenerateNoChatTemplate = "lamda::generate::no_chat_template": "`--chat` with a model folder whose tokenizer_config.json has no chat template",
    GenerateChatTemplate = "lamda::generate::chat_template": "the model's chat template does not parse or fails to render",
    GeneratePromptTooLong = "lamda::generate::prompt_too_long": "the prompt fills the model's context: no position is left for a new token",
    GenerateInternal = "lamda::generate::internal": "a kernel rejected its inputs while generating (an internal error)",
    EvalData = "lamda::eval::data": "an evaluation data file holds no usable example, or a line of it is not one",
    EvalRunMismatch = "lamda::eval::run_mismatch": "a run given to a classifier's `eval` does not fit the spec (no trained head, other labels or pooling, another model)",
    // resume
    ResumeMismatch = "lamda::resume::mismatch": "a checkpoint was written for another spec, model or --steps",
    ResumeInvalid = "lamda::resume::invalid": "a checkpoint is damaged or contradicts itself",
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A labelled span.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// One reported problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    /// The file the labels point into.
    pub file: FileId,
    pub labels: Vec<Label>,
    pub help: Option<String>,
    /// Further context, possibly in other files (a stdlib definition, say).
    pub related: Vec<Diagnostic>,
}

impl Diagnostic {
    pub fn error(code: Code, file: FileId, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            file,
            labels: Vec::new(),
            help: None,
            related: Vec::new(),
        }
    }
    pub fn warning(code: Code, file: FileId, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, file, message)
        }
    }
    pub fn advice(code: Code, file: FileId, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Advice,
            ..Diagnostic::error(code, file, message)
        }
    }
    pub fn label(mut self, span: Span, text: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            text: text.into(),
        });
        self
    }
    pub fn help(mut self, text: impl Into<String>) -> Self {
        self.help = Some(text.into());
        self
    }
    pub fn related(mut self, d: Diagnostic) -> Self {
        self.related.push(d);
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Diagnostics collected by one phase.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }
    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }
    pub fn warning_count(&self) -> usize {
        self.items.iter().filter(|d| d.severity == Severity::Warning).count()
    }
}

// ------------------------------------------------------------------ rendering

#[derive(Debug)]
struct Rendered {
    code: Code,
    severity: Severity,
    message: String,
    src: Indexed,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
    related: Vec<Rendered>,
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code.as_str()))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
            Severity::Advice => miette::Severity::Advice,
        })
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(self.related.iter().map(|r| r as &dyn miette::Diagnostic)))
        }
    }
}

/// A source text with the start of every line, for miette.
///
/// miette's own `read_span` scans the text from its start for every label and
/// returns a `line_count` counted from the start of the file, which its
/// snippet merging reads as the snippet's length: two labels far apart (rule
/// 2000 and rule 4000) became one snippet of every line between them. This
/// reads the same contents from a window of a few lines around the span (so
/// each read costs the window, not the file), with `line_count` counted in
/// that window, so far-apart labels get snippets of their own.
#[derive(Debug, Clone)]
struct Indexed {
    name: String,
    text: Arc<str>,
    /// Byte offset where each line starts; breaks are `\n`, `\r\n` or `\r` (as miette counts them).
    line_starts: Arc<[usize]>,
}

impl Indexed {
    fn new(name: String, text: Arc<str>) -> Self {
        let b = text.as_bytes();
        let mut starts = vec![0];
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\r' if b.get(i + 1) == Some(&b'\n') => {
                    starts.push(i + 2);
                    i += 2;
                    continue;
                }
                b'\r' | b'\n' => starts.push(i + 1),
                _ => {}
            }
            i += 1;
        }
        Indexed {
            name,
            text,
            line_starts: starts.into(),
        }
    }

    /// The line (0-based) holding byte `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).saturating_sub(1)
    }
}

impl SourceCode for Indexed {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let start = span.offset();
        let end = start + span.len();
        if end > self.text.len() {
            return Err(MietteError::OutOfBounds);
        }
        let first = self.line_of(start).saturating_sub(context_lines_before);
        // one line more than the context needs, so the window never cuts it short
        let last = self.line_of(end.saturating_sub(1).max(start)) + context_lines_after + 2;
        let base = self.line_starts[first];
        let stop = self.line_starts.get(last).copied().unwrap_or(self.text.len());
        let window = &self.text.as_bytes()[base..stop];
        let inner = window.read_span(
            &SourceSpan::new((start - base).into(), span.len()),
            context_lines_before,
            context_lines_after,
        )?;
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            SourceSpan::new((inner.span().offset() + base).into(), inner.span().len()),
            inner.line() + first,
            inner.column(),
            inner.line_count(),
        )))
    }
}

/// The widest column a label may start or end at and still be drawn in a
/// source snippet. miette pads underlines with `{:width$}`, whose width must
/// fit in a `u16` (a label at column 65536 panics with "Formatting argument
/// out of range"), and a snippet line far wider than the terminal helps
/// nobody: such labels are reported as `file:line:col` lines instead.
const MAX_SNIPPET_COLUMN: usize = 1024;

/// An upper bound of the on-screen column of byte `offset` in `text` as
/// miette draws it: tabs advance to the next multiple of 4, any other
/// character counts 2 (the widest a character can be).
fn visual_column(text: &str, offset: usize) -> usize {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    text[line_start..offset]
        .chars()
        .fold(0, |col, c| if c == '\t' { col + 4 - col % 4 } else { col + 2 })
}

/// The [`Indexed`] source of every file, built on first use (once per file,
/// not once per diagnostic).
#[derive(Default)]
struct IndexCache(std::collections::BTreeMap<FileId, Indexed>);

impl IndexCache {
    fn get(&mut self, sources: &SourceMap, file: FileId) -> Indexed {
        self.0
            .entry(file)
            .or_insert_with(|| match sources.get(file) {
                Some(f) => Indexed::new(f.name.clone(), f.text.clone()),
                None => Indexed::new("<unknown>".to_string(), Arc::from("")),
            })
            .clone()
    }
}

fn to_rendered(sources: &SourceMap, cache: &mut IndexCache, d: &Diagnostic) -> Rendered {
    let src = cache.get(sources, d.file);
    let (name, text) = (src.name.clone(), src.text.clone());
    // Spans clamped into the text and onto character boundaries.
    let spans: Vec<(usize, usize)> = d
        .labels
        .iter()
        .map(|l| {
            let start = text.floor_char_boundary(l.span.start);
            let end = text.ceil_char_boundary(l.span.end.max(start));
            (start, end)
        })
        .collect();
    let drawable = spans
        .iter()
        .all(|&(s, e)| visual_column(&text, s) <= MAX_SNIPPET_COLUMN && visual_column(&text, e) <= MAX_SNIPPET_COLUMN);
    let mut message = d.message.clone();
    let labels = if drawable {
        d.labels
            .iter()
            .zip(&spans)
            .enumerate()
            .map(|(i, (l, &(start, end)))| {
                let text = if l.text.is_empty() { None } else { Some(l.text.clone()) };
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, (start, end - start))
                } else {
                    LabeledSpan::new_with_span(text, (start, end - start))
                }
            })
            .collect()
    } else {
        for (l, &(start, _)) in d.labels.iter().zip(&spans) {
            let line = src.line_of(start);
            let col = text[src.line_starts[line]..start].chars().count() + 1;
            let line = line + 1;
            message.push_str(&format!("\n  --> {name}:{line}:{col}"));
            if !l.text.is_empty() {
                message.push_str(&format!(": {}", l.text));
            }
        }
        message.push_str(&format!(
            "\n  (the line is too long to show: past column {MAX_SNIPPET_COLUMN})"
        ));
        Vec::new()
    };
    Rendered {
        code: d.code,
        severity: d.severity,
        message,
        src,
        labels,
        help: d.help.clone(),
        related: d.related.iter().map(|r| to_rendered(sources, cache, r)).collect(),
    }
}

/// How to render: with colour for a terminal, or plain for files and snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Color,
    Plain,
}

/// Renders diagnostics as a user sees them, errors first, each in source order.
pub fn render(sources: &SourceMap, diags: &[Diagnostic], style: Style) -> String {
    let theme = match style {
        Style::Color => GraphicalTheme::unicode(),
        Style::Plain => GraphicalTheme::unicode_nocolor(),
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    let mut cache = IndexCache::default();
    for d in sorted(diags) {
        let r = to_rendered(sources, &mut cache, d);
        if handler.render_report(&mut out, &r).is_err() {
            out.push_str(&format!("{}: {}\n", d.code, d.message));
        }
    }
    out
}

/// Diagnostics as JSON values (for `check --format json`), in [`sorted`]
/// order: `code`, `severity`, `message`, `file`, `line` and `column` of the
/// primary label (1-based; absent without labels), `labels` (each with its
/// `line`, `column` and `text`), `help`, and `related` (the same, nested).
pub fn to_json(sources: &SourceMap, diags: &[Diagnostic]) -> serde_json::Value {
    let mut cache = IndexCache::default();
    serde_json::Value::Array(
        sorted(diags)
            .into_iter()
            .map(|d| json_one(sources, &mut cache, d))
            .collect(),
    )
}

fn json_one(sources: &SourceMap, cache: &mut IndexCache, d: &Diagnostic) -> serde_json::Value {
    let src = cache.get(sources, d.file);
    let at = |offset: usize| {
        let offset = src.text.floor_char_boundary(offset);
        let line = src.line_of(offset);
        let col = src.text[src.line_starts[line]..offset].chars().count() + 1;
        (line + 1, col)
    };
    let labels: Vec<serde_json::Value> = d
        .labels
        .iter()
        .map(|l| {
            let (line, column) = at(l.span.start);
            serde_json::json!({ "line": line, "column": column, "text": l.text })
        })
        .collect();
    let mut v = serde_json::json!({
        "code": d.code.as_str(),
        "severity": match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Advice => "advice",
        },
        "message": d.message,
        "file": src.name,
        "labels": labels,
        "help": d.help,
        "related": d.related.iter().map(|r| json_one(sources, cache, r)).collect::<Vec<_>>(),
    });
    if let (Some(l), Some(obj)) = (d.labels.first(), v.as_object_mut()) {
        let (line, column) = at(l.span.start);
        obj.insert("line".into(), line.into());
        obj.insert("column".into(), column.into());
    }
    v
}

/// Errors first, then warnings, then advice; within each, by file and position.
pub fn sorted(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    let mut v: Vec<&Diagnostic> = diags.iter().collect();
    v.sort_by_key(|d| (d.severity, d.file, d.labels.first().map_or(0, |l| l.span.start)));
    v
}
