//! `lamdac`: the command-line interface (thin: clap + calls into the crates).
//!
//! Exit codes: 0 success (warnings allowed), 1 errors in the input (the
//! spec, the checkpoint, the data), 2 usage or I/O problems (clap's own
//! usage errors exit 2 as well). An interrupted `train` saves a checkpoint
//! and exits 130.

use std::io::IsTerminal;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use lamda_compiler::diag::{Code, Severity, Style, render};
use lamda_compiler::report;
use lamda_compiler::resolve::{Checked, check_path};
use lamda_compiler::spec::Device;
use lamda_runtime::backend::cuda::Precision;
use lamda_runtime::session::{self, Observer, RunOptions, SessionError};
use lamda_runtime::train::{StepStats, Trainer};

/// mimalloc for what is allocated around the training steps (data,
/// checkpoints, decoding). A steady-state step itself allocates nothing: the
/// executor keeps activations in a pool laid out by the memory plan.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lamdac",
    version,
    about = "Compile and train .lamda adapter specs (LaMDA, LoRA-family)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, resolve and check a spec; print what will train and what it costs.
    Check {
        /// The .lamda file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Colour in diagnostics: auto (when stderr is a terminal), always, never.
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Compile a spec: LaMDA++ ranks (from the checkpoint's weights), phases, memory plan.
    Plan {
        file: PathBuf,
        /// A checkpoint folder for `rank auto` when the spec names a stdlib preset.
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Print the compiled training step: the IR as text or Graphviz.
    Emit {
        file: PathBuf,
        /// What to print.
        #[arg(long, value_enum)]
        target: Target,
        /// Only the forward graph (default: forward and backward of the first phase).
        #[arg(long)]
        forward_only: bool,
        /// After the fusion pass.
        #[arg(long)]
        fused: bool,
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Time a training step of the spec side by side: this spec vs LoRA at the
    /// same ranks, reference ops vs fused kernels.
    Bench {
        file: PathBuf,
        /// Timed steps per variant (at least 1).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        steps: u64,
        /// Untimed steps first.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print the time spent per op (CPU).
        #[arg(long)]
        profile: bool,
        /// Only these variants (repeatable; default: all four). One variant
        /// per process gives its own peak memory.
        #[arg(long, value_enum)]
        variant: Vec<BenchVariant>,
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
    /// Export a trained adapter as a standard PEFT LoRA adapter (adapter_model.safetensors + adapter_config.json).
    Export {
        /// The .lamda file the run was trained with.
        file: PathBuf,
        /// The run's output folder (default: the train block's `out`, else runs/<file name>).
        #[arg(long)]
        run: Option<PathBuf>,
        /// Where to write (default: <run>/peft).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Merge a trained adapter into the base weights: a Hugging Face checkpoint folder.
    Merge {
        file: PathBuf,
        #[arg(long)]
        run: Option<PathBuf>,
        /// Where to write (default: <run>/merged).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Convert a GGUF model (F32/F16/BF16/Q8_0/Q4_1) into a Hugging Face checkpoint folder.
    Convert {
        /// The .gguf file.
        gguf: PathBuf,
        /// The folder to write (config.json, model.safetensors, tokenizer.json).
        out: PathBuf,
    },
    /// Generate text from the spec's model, with a run's adapter merged in or without.
    Generate {
        /// The .lamda file (its `use "folder"` names the base model).
        file: PathBuf,
        /// A training run's output folder: its adapter.safetensors is merged
        /// into the weights. Without it, the base model generates.
        #[arg(long, conflicts_with = "no_adapter")]
        run: Option<PathBuf>,
        /// The base model, even where a run is given elsewhere.
        #[arg(long)]
        no_adapter: bool,
        /// The text to continue (with --chat: the user's message).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        prompt: String,
        /// Render the prompt as a user turn with the model's chat template.
        #[arg(long)]
        chat: bool,
        /// New tokens at most.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// 0 picks the most likely token (greedy, reproducible); above 0 samples.
        #[arg(long, default_value_t = 0.0, value_parser = parse_temperature)]
        temperature: f32,
        /// Nucleus sampling: the smallest set of tokens with this much probability (0 < p <= 1).
        #[arg(long, default_value_t = 1.0, value_parser = parse_top_p)]
        top_p: f32,
        /// Seed of the sampling stream.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Perplexity and answer accuracy on held-out data, base model and adapted model side by side.
    Eval {
        /// The .lamda file (its `use "folder"` names the base model).
        file: PathBuf,
        /// A training run's output folder: its adapter is evaluated beside the base model.
        /// For a classifier spec (`head classify`), repeatable: the runs side by side
        /// (e.g. a head-only baseline, LaMDA, LoRA); default: the spec's own run folder.
        #[arg(long)]
        run: Vec<PathBuf>,
        /// Data to evaluate on (default: the train block's `eval_data`, else the part of
        /// its data that `split` holds out, else its data; said on stderr). Text or JSONL
        /// for a language model; TSV, CSV or JSONL with labels for a classifier.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Only the first N examples.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// New tokens at most per generated answer.
        #[arg(long, default_value_t = 256)]
        max_tokens: usize,
        /// Where to write the per-example predictions (JSONL; default:
        /// <run>/eval-<data name>.jsonl, without --run runs/<file name>/eval-<data name>.jsonl;
        /// `-held-out` before `.jsonl` for the part `split` holds out).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Output format of the summary.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Train the adapters of a spec.
    Train {
        file: PathBuf,
        /// Overrides the train block's `steps` (1 to 2^32, as there).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=lamda_compiler::limits::MAX_STEPS))]
        steps: Option<u64>,
        /// Overrides the output folder (default: the train block's `out`, else runs/<file name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue a run: its output folder or a checkpoint folder.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Overrides the train block's `device`.
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
        /// No progress bar; one log line per tenth of the run.
        #[arg(long)]
        quiet: bool,
        /// Run the unfused reference ops instead of fused, JIT-compiled kernels.
        #[arg(long)]
        no_jit: bool,
        /// Storage on the GPU: bf16 (frozen weights and saved activations in
        /// bf16, trainable tensors in f32; the default there) or f32 (parity
        /// with the CPU). The CPU trains in f32.
        #[arg(long, value_enum)]
        precision: Option<PrecisionArg>,
        #[arg(long, value_enum, default_value_t = Color::Auto)]
        color: Color,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Bf16,
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Ir,
    Dot,
    Clif,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

fn style(c: Color) -> Style {
    match c {
        Color::Always => Style::Color,
        Color::Never => Style::Plain,
        Color::Auto if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() => Style::Color,
        Color::Auto => Style::Plain,
    }
}

fn main() -> ExitCode {
    // The main thread, which runs the executor, is one of rayon's workers:
    // its parallel ops push jobs to its own deque instead of handing them to
    // the pool through the global queue (whose blocks are allocated as it
    // fills), and the pool has one thread per core, not one per core plus
    // a caller that waits. Fails only if a pool exists already.
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file, format, color } => check(&file, format, style(color)),
        Command::Plan { file, weights, color } => plan(&file, weights.as_deref(), style(color)),
        Command::Emit {
            file,
            target,
            forward_only,
            fused,
            color,
        } => emit(&file, target, forward_only, fused, style(color)),
        Command::Convert { gguf, out } => convert(&gguf, &out),
        Command::Export { file, run, out } => export(&file, run, out, false),
        Command::Merge { file, run, out } => export(&file, run, out, true),
        Command::Bench {
            file,
            steps,
            warmup,
            json,
            profile,
            variant,
            color,
        } => bench(&file, steps, warmup, json, profile, &variant, style(color)),
        Command::Generate {
            file,
            run,
            no_adapter,
            prompt,
            chat,
            max_tokens,
            temperature,
            top_p,
            seed,
        } => {
            let sampling = lamda_runtime::generate::Sampling {
                temperature,
                top_p,
                seed,
            };
            generate(&file, run.as_deref(), no_adapter, &prompt, chat, max_tokens, sampling)
        }
        Command::Eval {
            file,
            run,
            data,
            limit,
            max_tokens,
            out,
            format,
        } => {
            let opts = lamda_runtime::generate::eval::EvalOptions {
                limit: limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
                max_tokens,
            };
            eval(&file, &run, data, out, opts, format)
        }
        Command::Train {
            file,
            steps,
            out,
            resume,
            device,
            quiet,
            no_jit,
            precision,
            color,
        } => {
            let device = device.map(|d| match d {
                DeviceArg::Cpu => Device::Cpu,
                DeviceArg::Cuda => Device::Cuda,
                DeviceArg::Auto => Device::Auto,
            });
            let opts = RunOptions {
                spec: file,
                steps,
                out,
                resume,
                device,
                fuse: !no_jit,
                precision: precision.map(|p| match p {
                    PrecisionArg::Bf16 => Precision::Bf16,
                    PrecisionArg::F32 => Precision::F32,
                }),
                ..RunOptions::default()
            };
            train(&opts, quiet || !std::io::stderr().is_terminal(), style(color))
        }
    }
}

/// Writes to stdout; a closed pipe (`lamdac emit ... | head`) is not an error.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

fn io_error(path: &Path, e: &std::io::Error) -> ExitCode {
    eprintln!("error[{}]: cannot read `{}`: {e}", Code::Io, path.display());
    ExitCode::from(2)
}

/// Checks a file, printing its diagnostics; `None` (with the exit code) when it has errors.
fn checked(path: &Path, style: Style) -> Result<Checked, ExitCode> {
    checked_quiet(path, style, false)
}

/// [`checked`]; with `keep_warnings`, warnings and advice of a file without
/// errors are left to the caller (`check --format json` puts them in its JSON).
fn checked_quiet(path: &Path, style: Style, keep_warnings: bool) -> Result<Checked, ExitCode> {
    let checked = check_path(path).map_err(|e| io_error(path, &e))?;
    let has_errors = checked.spec.is_none();
    if !checked.diags.is_empty() && (has_errors || !keep_warnings) {
        eprint!("{}", render(&checked.sources, &checked.diags, style));
    }
    if checked.spec.is_none() {
        let errors = checked.diags.iter().filter(|d| d.severity == Severity::Error).count();
        let warnings = checked.diags.iter().filter(|d| d.severity == Severity::Warning).count();
        eprintln!(
            "lamdac: {} error{}{} in {}",
            errors,
            if errors == 1 { "" } else { "s" },
            if warnings > 0 {
                format!(", {warnings} warning{}", if warnings == 1 { "" } else { "s" })
            } else {
                String::new()
            },
            path.display()
        );
        return Err(ExitCode::from(1));
    }
    Ok(checked)
}

fn check(path: &Path, format: Format, style: Style) -> ExitCode {
    let checked = match checked_quiet(path, style, matches!(format, Format::Json)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(spec) = checked.spec else {
        return ExitCode::from(1);
    };
    let rep = report::report(&spec);
    let peak = report::peak_memory(&spec);
    match format {
        Format::Text => {
            out(&report::render_text(&rep));
            if let Some(p) = &peak {
                out(&report::render_peak(p));
            }
        }
        Format::Json => {
            let mut v = match serde_json::to_value(&rep) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error[{}]: cannot serialize the report: {e}", Code::Io);
                    return ExitCode::from(2);
                }
            };
            if let (Some(obj), Some(p)) = (v.as_object_mut(), &peak) {
                obj.insert("peak_memory".into(), serde_json::to_value(p).unwrap_or_default());
            }
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "diagnostics".into(),
                    lamda_compiler::diag::to_json(&checked.sources, &checked.diags),
                );
            }
            out(&format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()));
        }
    }
    ExitCode::SUCCESS
}

struct WeightSpectra(lamda_runtime::checkpoint::Checkpoint);

impl lamda_compiler::pipeline::Spectra for WeightSpectra {
    fn energy(&mut self, weight: &str, r0: u64) -> Result<f64, String> {
        let w = self.0.matrix(weight).map_err(|e| e.to_string())?;
        let (rows, cols) = w.dim();
        let data: Vec<f32> = w.iter().copied().collect();
        let m = lamda_runtime::linalg::MatF32Ref::new("weight", &data, rows, cols).map_err(|e| e.to_string())?;
        lamda_runtime::linalg::energy(m, r0 as usize).map_err(|e| e.to_string())
    }
}

fn plan(path: &Path, weights: Option<&Path>, style: Style) -> ExitCode {
    let checked = match checked(path, style) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(spec) = checked.spec else {
        return ExitCode::from(1);
    };
    let dir = match (&spec.model.source, weights) {
        (_, Some(w)) => Some(w.to_path_buf()),
        (lamda_compiler::model::ModelSource::Checkpoint(d), None) => Some(d.clone()),
        _ => None,
    };
    let mut spectra = None;
    if let Some(d) = &dir {
        match lamda_runtime::checkpoint::Checkpoint::open(d) {
            Ok(c) => spectra = Some(WeightSpectra(c)),
            Err(e) => {
                eprintln!("error[{}]: {e}\n  help: {}", e.code(), e.hint());
                return ExitCode::from(1);
            }
        }
    }
    let (batch, seq) = (spec.train.batch as usize, spec.train.seq as usize);
    let plan = match lamda_compiler::pipeline::compile(
        &spec,
        batch,
        seq,
        spectra
            .as_mut()
            .map(|s| s as &mut dyn lamda_compiler::pipeline::Spectra),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error[{}]: {e}", Code::Compile);
            return ExitCode::from(1);
        }
    };
    out(&lamda_runtime::describe::plan_text(&plan));
    ExitCode::SUCCESS
}

fn emit(path: &Path, target: Target, forward_only: bool, fused: bool, style: Style) -> ExitCode {
    let checked = match checked(path, style) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(spec) = checked.spec else {
        return ExitCode::from(1);
    };
    if matches!(target, Target::Clif | Target::Cuda) {
        return emit_kernels(&spec, target);
    }
    // what `train` runs on the CPU (the head loss is fused there)
    let options = lamda_compiler::pipeline::Options {
        fuse: fused,
        head_loss: fused,
    };
    let ir = match lamda_compiler::pipeline::emit_ir_with(
        &spec,
        spec.train.batch as usize,
        spec.train.seq as usize,
        !forward_only,
        options,
    ) {
        Ok(ir) => ir,
        Err(e) => {
            eprintln!("error[{}]: {e}", Code::Compile);
            return ExitCode::from(1);
        }
    };
    match target {
        Target::Ir => out(&lamda_compiler::ir::print::to_text(&ir)),
        _ => out(&lamda_compiler::ir::print::to_dot(&ir)),
    }
    ExitCode::SUCCESS
}

/// A variant of `lamdac bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchVariant {
    /// This spec, reference ops.
    SpecRef,
    /// This spec, fused kernels (what `train` runs).
    SpecFused,
    /// LoRA at the same ranks, reference ops.
    LoraRef,
    /// LoRA at the same ranks, fused kernels.
    LoraFused,
}

fn bench(
    path: &Path,
    steps: u64,
    warmup: u64,
    json: bool,
    profile: bool,
    only: &[BenchVariant],
    style: Style,
) -> ExitCode {
    let checked = match checked(path, style) {
        Ok(c) => c,
        Err(code) => return code,
    };
    use lamda_runtime::bench::{Variant, bench, render};
    let all = [
        BenchVariant::SpecRef,
        BenchVariant::SpecFused,
        BenchVariant::LoraRef,
        BenchVariant::LoraFused,
    ];
    let variants: Vec<Variant> = all
        .into_iter()
        .filter(|v| only.is_empty() || only.contains(v))
        .map(|v| Variant {
            lora: matches!(v, BenchVariant::LoraRef | BenchVariant::LoraFused),
            fuse: matches!(v, BenchVariant::SpecFused | BenchVariant::LoraFused),
        })
        .collect();
    match bench(path, &checked, warmup, steps, &variants, profile) {
        Ok(rows) => {
            if json {
                out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                ));
            } else {
                out(&render(&rows));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            ExitCode::from(e.exit_code())
        }
    }
}

fn export(file: &Path, run: Option<PathBuf>, out: Option<PathBuf>, merge: bool) -> ExitCode {
    let checked = match checked(file, Style::Plain) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(spec) = checked.spec else {
        return ExitCode::from(1);
    };
    let run = run.unwrap_or_else(|| session::default_run_folder(file, spec.train.out.as_deref()));
    let adapter = run.join("adapter.safetensors");
    if !adapter.is_file() {
        eprintln!(
            "error[{}]: `{}` does not exist\n  help: train first (`lamdac train {}`), or pass the run folder with --run",
            Code::ExportNoAdapter,
            adapter.display(),
            file.display()
        );
        return ExitCode::from(1);
    }
    let model = match &spec.model.source {
        lamda_compiler::model::ModelSource::Checkpoint(d) => d.clone(),
        lamda_compiler::model::ModelSource::Preset(p) if !merge => PathBuf::from(p),
        lamda_compiler::model::ModelSource::Preset(p) => {
            eprintln!(
                "error[{}]: `{p}` is a stdlib preset: there are no weights to merge into",
                Code::ExportNoWeights
            );
            return ExitCode::from(1);
        }
    };
    let result = if merge {
        let out = out.unwrap_or_else(|| run.join("merged"));
        lamda_runtime::export::merge(&adapter, &model, &out)
            .map(|()| format!("merged weights written to {}", out.display()))
    } else {
        let out = out.unwrap_or_else(|| run.join("peft"));
        lamda_runtime::export::export_peft(&adapter, &model.display().to_string(), &out).map(|f| {
            format!(
                "{} modules exported as a PEFT LoRA adapter to {}",
                f.len(),
                out.display()
            )
        })
    };
    match result {
        Ok(msg) => {
            eprintln!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            let hint = e.hint();
            if !hint.is_empty() {
                eprintln!("  help: {hint}");
            }
            exit_for(e.code())
        }
    }
}

fn parse_temperature(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("`{s}` is not a temperature (a number >= 0)")),
    }
}

fn parse_top_p(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!("`{s}` is not a top-p (a number in (0, 1])")),
    }
}

/// The base model's folder of a checked spec, or the error (printed) for a stdlib preset.
fn model_folder(spec: &lamda_compiler::spec::ResolvedSpec, command: &str) -> Result<PathBuf, ExitCode> {
    match &spec.model.source {
        lamda_compiler::model::ModelSource::Checkpoint(d) => Ok(d.clone()),
        lamda_compiler::model::ModelSource::Preset(p) => {
            eprintln!(
                "error[{}]: `{p}` is a stdlib preset: there are no weights to run\n  help: `use \"path/to/checkpoint\" as m` in the spec to {command} with a real model",
                Code::GenerateNoWeights
            );
            Err(ExitCode::from(1))
        }
    }
}

/// The adapter file of a run folder (`<run>/adapter.safetensors`), or the error (printed).
/// The checked spec of `file`, its model folder, and the adapter of `run`
/// (when given): what `generate` and `eval` start from.
fn spec_model_adapter(
    file: &Path,
    run: Option<&Path>,
    command: &str,
) -> Result<(lamda_compiler::spec::ResolvedSpec, PathBuf, Option<PathBuf>), ExitCode> {
    let spec = checked(file, Style::Plain)?.spec.ok_or(ExitCode::from(1))?;
    let dir = model_folder(&spec, command)?;
    let adapter = run.map(|r| run_adapter(file, r)).transpose()?;
    Ok((spec, dir, adapter))
}

fn run_adapter(file: &Path, run: &Path) -> Result<PathBuf, ExitCode> {
    let adapter = run.join("adapter.safetensors");
    if adapter.is_file() {
        return Ok(adapter);
    }
    eprintln!(
        "error[{}]: `{}` does not exist: `{}` is not the output folder of a training run\n  help: train first (`lamdac train {}`), or pass the folder `train` wrote (its adapter.safetensors is written at every checkpoint)",
        Code::ExportNoAdapter,
        adapter.display(),
        run.display(),
        file.display()
    );
    Err(ExitCode::from(1))
}

fn generate_error(e: &lamda_runtime::generate::GenerateError) -> ExitCode {
    eprintln!("error[{}]: {e}", e.code());
    let hint = e.hint();
    if !hint.is_empty() {
        eprintln!("  help: {hint}");
    }
    ExitCode::from(e.exit_code())
}

fn generate(
    file: &Path,
    run: Option<&Path>,
    no_adapter: bool,
    prompt: &str,
    chat: bool,
    max_tokens: usize,
    sampling: lamda_runtime::generate::Sampling,
) -> ExitCode {
    use lamda_runtime::generate::{Generator, Stop, TextStream};
    let (spec, dir, adapter) = match spec_model_adapter(file, run.filter(|_| !no_adapter), "generate") {
        Ok(t) => t,
        Err(code) => return code,
    };
    let started = std::time::Instant::now();
    let generator = match Generator::open(&dir, adapter.as_deref()) {
        Ok(g) => g,
        Err(e) => return generate_error(&e),
    };
    match &adapter {
        Some(a) => eprintln!(
            "model {} with the adapter {} ({} modules merged)",
            dir.display(),
            a.display(),
            generator.adapted_modules
        ),
        None if no_adapter => eprintln!("model {} (base model: --no-adapter)", dir.display()),
        None => {
            // the folder `train` writes to by default, if it has an adapter: say how to use it
            let default_run = session::default_run_folder(file, spec.train.out.as_deref());
            let tip = if default_run.join("adapter.safetensors").is_file() {
                format!("; --run {} to use its trained adapter", default_run.display())
            } else {
                String::new()
            };
            eprintln!(
                "model {} (base model: no --run given, so no adapter{tip})",
                dir.display()
            );
        }
    }
    let ids = match generator.prompt_ids(prompt, chat) {
        Ok(ids) => ids,
        Err(e) => return generate_error(&e),
    };
    let loaded = started.elapsed();
    let mut stream = TextStream::new();
    let decode_started = std::time::Instant::now();
    let result = generator.generate(&ids, max_tokens, sampling, true, |id| {
        let piece = stream.push(&generator.tokenizer, id)?;
        if !piece.is_empty() {
            out(&piece);
        }
        Ok(())
    });
    let generation = match result {
        Ok(g) => g,
        Err(e) => {
            out("\n");
            return generate_error(&e);
        }
    };
    if let Ok(rest) = stream.finish(&generator.tokenizer) {
        out(&rest);
    }
    out("\n");
    let secs = decode_started.elapsed().as_secs_f64();
    let why = match generation.stop {
        Stop::StopToken => "a stop token",
        Stop::MaxTokens => "--max-tokens",
        Stop::Context => "the end of the model's context",
    };
    eprintln!(
        "{} prompt tokens, {} new tokens in {secs:.2}s ({:.1} tokens/s; loading {:.2}s); stopped at {why}",
        generation.prompt.len(),
        generation.tokens.len(),
        generation.tokens.len() as f64 / secs.max(1e-9),
        loaded.as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn eval(
    file: &Path,
    runs: &[PathBuf],
    data: Option<PathBuf>,
    out_path: Option<PathBuf>,
    opts: lamda_runtime::generate::eval::EvalOptions,
    format: Format,
) -> ExitCode {
    use lamda_runtime::generate::eval::{EvalData, evaluate, render_table};
    use lamda_runtime::generate::{ChatTemplate, Generator};
    let spec = match checked(file, Style::Plain).map(|c| c.spec) {
        Ok(Some(s)) => s,
        Ok(None) => return ExitCode::from(1),
        Err(code) => return code,
    };
    if spec.train.head.is_some() {
        return eval_classifier(file, &spec, runs, data, out_path, opts.limit, format);
    }
    if runs.len() > 1 {
        eprintln!(
            "error: --run given {} times: a language model is evaluated base and adapted, one run at a time (several runs side by side are for classifiers, `head classify`)",
            runs.len()
        );
        return ExitCode::from(2);
    }
    let run = runs.first().map(PathBuf::as_path);
    let dir = match model_folder(&spec, "evaluate") {
        Ok(d) => d,
        Err(code) => return code,
    };
    let adapter = match run.map(|r| run_adapter(file, r)).transpose() {
        Ok(a) => a,
        Err(code) => return code,
    };
    // Without --data: the spec's held-out data (`eval_data`, or the part
    // `split` keeps out of training), else its training data, said as such.
    let mut held_out = None;
    let data = match data.or_else(|| {
        if let Some(p) = &spec.train.eval_data {
            eprintln!("no --data: evaluating on the train block's eval_data {}", p.display());
            return Some(p.clone());
        }
        let d = spec.train.data.clone();
        if let Some(p) = &d {
            match spec.train.split {
                Some(f) => {
                    held_out = Some(f);
                    eprintln!(
                        "no --data: evaluating on the part of {} that `split {f}` holds out of training",
                        p.display()
                    );
                }
                None => eprintln!(
                    "no --data: evaluating on the train block's data {} (not held out)",
                    p.display()
                ),
            }
        }
        d
    }) {
        Some(d) => d,
        None => {
            eprintln!(
                "error[{}]: nothing to evaluate on: no --data, and the spec's train block names no data\n  help: pass --data FILE (text, or JSONL with `text`, `prompt`/`completion`, `question`/`answer` or `messages`)",
                Code::TrainNoData
            );
            return ExitCode::from(1);
        }
    };
    let template = match ChatTemplate::for_folder(&dir) {
        Ok(t) => t,
        Err(e) => return generate_error(&e),
    };
    let data = match EvalData::load(&data, template.as_ref()).and_then(|d| match held_out {
        Some(f) => d.held_out(f),
        None => Ok(d),
    }) {
        Ok(d) => d,
        Err(e) => return generate_error(&e),
    };
    let stem = data
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out_path = out_path.unwrap_or_else(|| {
        let base = run
            .map(Path::to_path_buf)
            .unwrap_or_else(|| session::default_run_folder(file, spec.train.out.as_deref()));
        let part = if held_out.is_some() { "-held-out" } else { "" };
        base.join(format!("eval-{stem}{part}.jsonl"))
    });
    let mut models = vec![("base", None)];
    if let Some(a) = &adapter {
        models.push(("adapted", Some(a.as_path())));
    }
    let shown = opts.limit.unwrap_or(usize::MAX).min(data.items.len());
    let mut summaries = Vec::new();
    let mut lines = String::new();
    for (label, adapter) in models {
        let g = match Generator::open(&dir, adapter) {
            Ok(g) => g,
            Err(e) => return generate_error(&e),
        };
        let started = std::time::Instant::now();
        // a counter on a terminal; in a log, a line per tenth
        let tty = std::io::stderr().is_terminal();
        let tenth = shown.div_ceil(10).max(1);
        let result = evaluate(&g, &data, label, opts, |p| {
            let done = p.index + 1;
            if shown > 1 && tty {
                eprint!("\r{label}: {done}/{shown}");
            } else if shown > 1 && (done.is_multiple_of(tenth) || done == shown) {
                eprintln!("{label}: {done}/{shown} ({:.1}s)", started.elapsed().as_secs_f64());
            }
        });
        if shown > 1 && tty {
            eprintln!(" ({:.1}s)", started.elapsed().as_secs_f64());
        }
        match result {
            Ok((summary, preds)) => {
                for p in &preds {
                    lines.push_str(&serde_json::to_string(p).unwrap_or_default());
                    lines.push('\n');
                }
                summaries.push(summary);
            }
            Err(e) => return generate_error(&e),
        }
    }
    if let Some(parent) = out_path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        eprintln!("error[{}]: cannot create `{}`: {e}", Code::Io, parent.display());
        return ExitCode::from(2);
    }
    if let Err(e) = std::fs::write(&out_path, &lines) {
        eprintln!("error[{}]: cannot write `{}`: {e}", Code::Io, out_path.display());
        return ExitCode::from(2);
    }
    match format {
        Format::Text => out(&render_table(&data, shown, &summaries)),
        Format::Json => {
            let v = serde_json::json!({
                "data": data.path.display().to_string(),
                "kind": data.kind,
                "examples": data.items.len(),
                "evaluated": shown,
                "predictions": out_path.display().to_string(),
                "models": summaries,
            });
            out(&format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()));
        }
    }
    eprintln!("predictions written to {}", out_path.display());
    ExitCode::SUCCESS
}

/// `lamdac eval` for a classifier spec (`head classify`): every run's
/// predictions on the held-out (or given) labelled data, side by side.
fn eval_classifier(
    file: &Path,
    spec: &lamda_compiler::spec::ResolvedSpec,
    runs: &[PathBuf],
    data: Option<PathBuf>,
    out_path: Option<PathBuf>,
    limit: Option<usize>,
    format: Format,
) -> ExitCode {
    use lamda_runtime::classify::{Classifier, EvalError, render_table};
    let fail = |e: &EvalError| {
        eprintln!("error[{}]: {e}", e.code());
        let hint = e.hint();
        if !hint.is_empty() {
            eprintln!("  help: {hint}");
        }
        ExitCode::from(if e.code() == Code::Io { 2 } else { 1 })
    };
    let dir = match model_folder(spec, "evaluate") {
        Ok(d) => d,
        Err(code) => return code,
    };
    let Some(head) = spec.train.head else {
        return ExitCode::from(1);
    };
    // the runs: as given, else the folder `train` writes this spec's run to
    let runs: Vec<PathBuf> = if runs.is_empty() {
        let default = session::default_run_folder(file, spec.train.out.as_deref());
        eprintln!("no --run: evaluating the spec's own run, {}", default.display());
        vec![default]
    } else {
        runs.to_vec()
    };
    for r in &runs {
        if let Err(code) = run_adapter(file, r) {
            return code;
        }
    }
    // Without --data: `eval_data`, else the part `split` holds out, else the training data.
    let mut held_out = None;
    let data = match data {
        Some(d) => d,
        None => match (&spec.train.eval_data, spec.train.split, &spec.train.data) {
            (Some(p), _, _) => {
                eprintln!("no --data: evaluating on the train block's eval_data {}", p.display());
                p.clone()
            }
            (None, Some(f), Some(p)) => {
                held_out = Some(f);
                eprintln!(
                    "no --data: evaluating on the part of {} that `split {f}` holds out of training",
                    p.display()
                );
                p.clone()
            }
            (None, None, Some(p)) => {
                eprintln!(
                    "no --data: evaluating on the train block's data {} (not held out)",
                    p.display()
                );
                p.clone()
            }
            (None, _, None) => {
                eprintln!(
                    "error[{}]: nothing to evaluate on: no --data, and the spec's train block names no data\n  help: pass --data FILE (TSV, CSV or JSONL with `text` or `text_a`/`text_b`, and `label`)",
                    Code::TrainNoData
                );
                return ExitCode::from(1);
            }
        },
    };
    let started = std::time::Instant::now();
    let loaded = lamda_runtime::checkpoint::Checkpoint::open(&dir)
        .map_err(EvalError::from)
        .and_then(|ckpt| Ok(lamda_runtime::data::Tokenizer::for_checkpoint(&ckpt)?))
        .and_then(|tok| {
            let (train, held) =
                lamda_runtime::data::Dataset::classes(&data, &tok, spec.train.seq as usize, head.labels, held_out)?;
            let d = held.unwrap_or(train);
            d.check_vocab(spec.model.param("vocab").and_then(|v| v.as_int()).unwrap_or(0).max(0) as usize)?;
            Ok(d)
        })
        .and_then(|d| Ok((d, Classifier::new(spec, &dir)?)));
    let (dataset, classifier) = match loaded {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let mut results = Vec::new();
    for r in &runs {
        let t = std::time::Instant::now();
        match classifier.evaluate(r, &dataset, limit) {
            Ok(mut res) => {
                eprintln!(
                    "{}: {} examples in {:.1}s",
                    r.display(),
                    res.predictions.len(),
                    t.elapsed().as_secs_f64()
                );
                // two runs of the same folder name are told apart by their paths
                if runs.iter().filter(|o| o.file_name() == r.file_name()).count() > 1 {
                    res.model = r.display().to_string();
                }
                results.push(res);
            }
            Err(e) => return fail(&e),
        }
    }
    let stem = data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = format!("eval-{stem}{}.jsonl", if held_out.is_some() { "-held-out" } else { "" });
    // predictions: one file per run in its folder, or all in --out
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for res in &results {
        let path = out_path.clone().unwrap_or_else(|| res.run.join(&name));
        let mut lines = String::new();
        for p in &res.predictions {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("model".into(), res.model.clone().into());
            }
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
        match files.iter_mut().find(|(f, _)| *f == path) {
            Some((_, text)) => text.push_str(&lines),
            None => files.push((path, lines)),
        }
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(parent)
        {
            eprintln!("error[{}]: cannot create `{}`: {e}", Code::Io, parent.display());
            return ExitCode::from(2);
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("error[{}]: cannot write `{}`: {e}", Code::Io, path.display());
            return ExitCode::from(2);
        }
    }
    let evaluated = results.first().map_or(0, |r| r.predictions.len());
    let shown = match held_out {
        Some(f) => format!("{} (held out by split {f})", data.display()),
        None => data.display().to_string(),
    };
    match format {
        Format::Text => out(&render_table(&shown, evaluated, head.labels, &results)),
        Format::Json => {
            let models: Vec<serde_json::Value> = results
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    let pred = out_path.clone().unwrap_or_else(|| r.run.join(&name));
                    if let Some(o) = v.as_object_mut() {
                        o.insert("predictions".into(), pred.display().to_string().into());
                    }
                    v
                })
                .collect();
            let v = serde_json::json!({
                "data": data.display().to_string(),
                "held_out": held_out,
                "kind": "classify",
                "labels": head.labels,
                "examples": dataset_len(&dataset),
                "evaluated": evaluated,
                "models": models,
            });
            out(&format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()));
        }
    }
    for (path, _) in &files {
        eprintln!("predictions written to {}", path.display());
    }
    eprintln!("evaluated in {:.1}s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

fn dataset_len(d: &lamda_runtime::data::Dataset) -> usize {
    match &d.source {
        lamda_runtime::data::Source::Classes { examples, .. } => examples.len(),
        _ => 0,
    }
}

/// Exit 2 for I/O problems (`lamda::io`: a file that cannot be read or
/// written), 1 for problems in the input.
fn exit_for(code: Code) -> ExitCode {
    ExitCode::from(if code == Code::Io { 2 } else { 1 })
}

fn convert(gguf: &Path, out: &Path) -> ExitCode {
    match lamda_runtime::checkpoint::gguf::convert_gguf(gguf, out) {
        Ok(s) => {
            eprintln!(
                "converted {} ({} tensors, {} parameters) into {}{}",
                gguf.display(),
                s.tensors,
                s.parameters,
                s.out_dir.display(),
                match (&s.tokenizer, &s.tokenizer_skipped) {
                    (Some(_), _) if s.tokenizer_config.is_some() => {
                        " with tokenizer.json and tokenizer_config.json (chat template)".to_string()
                    }
                    (Some(_), _) => " with tokenizer.json".to_string(),
                    (None, Some(why)) => format!(" (no tokenizer: {why})"),
                    (None, None) => String::new(),
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error[{}]: {e}\n  help: {}", e.code(), e.hint());
            exit_for(e.code())
        }
    }
}

fn emit_kernels(spec: &lamda_compiler::spec::ResolvedSpec, target: Target) -> ExitCode {
    // the plan of the backend that runs the code shown: CUDA plans keep the head loss unfused
    let options = lamda_compiler::pipeline::Options {
        fuse: true,
        head_loss: matches!(target, Target::Clif),
    };
    let plan = match lamda_compiler::pipeline::compile_with(
        spec,
        spec.train.batch as usize,
        spec.train.seq as usize,
        None,
        options,
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error[{}]: {e}", Code::Compile);
            return ExitCode::from(1);
        }
    };
    let kernels = match target {
        // what the CUDA backend compiles: the fused kernels and the kernel-IR
        // instances of the unfused ops and of AdamW
        Target::Cuda => {
            lamda_compiler::codegen::cuda::module_kernels(plan.phases.iter().map(|p| &p.program).chain([&plan.eval]))
        }
        _ => plan.kernels(),
    };
    let text = match target {
        Target::Cuda => lamda_compiler::codegen::cuda::module_source(&kernels).map_err(|e| e.to_string()),
        _ => kernels
            .iter()
            .map(|k| lamda_compiler::codegen::clif::clif_text(k).map(|t| format!("; {}\n{t}", k.name)))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join("\n"))
            .map_err(|e| e.to_string()),
    };
    match text {
        Ok(t) => {
            out(&t);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error[{}]: {e}", Code::Emit);
            ExitCode::from(1)
        }
    }
}

/// Progress bar (or log lines) for `train`.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    first_loss: Option<f32>,
    /// The last validation loss.
    val_loss: Option<f32>,
    started: std::time::Instant,
}

impl Observer for Progress {
    fn warning(&mut self, code: Code, text: &str) {
        let line = format!("warning[{code}]: {text}");
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn start(&mut self, tr: &Trainer) {
        self.total = tr.total_steps();
        self.started = std::time::Instant::now();
        if let Some(bar) = &self.bar {
            bar.set_length(self.total);
            bar.set_position(tr.step);
            bar.reset_eta();
        }
    }
    fn validation(&mut self, _tr: &Trainer, v: &lamda_runtime::train::Validation) {
        self.val_loss = Some(v.loss);
        let line = format!(
            "step {:>6}/{}  validation loss {:.4} ({} held-out targets)",
            v.step, self.total, v.loss, v.targets
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn step(&mut self, _tr: &Trainer, s: &StepStats, tps: f64) {
        self.first_loss.get_or_insert(s.loss);
        let val = self.val_loss.map(|v| format!("  val {v:.4}")).unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                bar.set_position(s.step + 1);
                bar.set_message(format!("loss {:.4}{val}  {:.0} tok/s  lr {:.2e}", s.loss, tps, s.lr));
            }
            None => {
                let every = (self.total / 10).max(1);
                if (s.step + 1).is_multiple_of(every) || s.step == 0 || s.step + 1 == self.total {
                    eprintln!(
                        "step {:>6}/{}  loss {:.4}  {:.0} tok/s  lr {:.2e}  {:.1}s",
                        s.step + 1,
                        self.total,
                        s.loss,
                        tps,
                        s.lr,
                        self.started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
}

fn train(opts: &RunOptions, quiet: bool, style: Style) -> ExitCode {
    // The spec's summary first: what will train and what it costs.
    let checked = match checked(&opts.spec, style) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(spec) = &checked.spec {
        let mut spec = spec.clone();
        if let Some(s) = opts.steps {
            spec.train.steps = s;
        }
        eprint!("{}", report::render_text(&report::report(&spec)));
    }
    let fail = |e: SessionError| {
        eprintln!("error[{}]: {e}", e.code());
        let hint = e.hint();
        if !hint.is_empty() {
            eprintln!("  help: {hint}");
        }
        ExitCode::from(e.exit_code())
    };
    // The spec checked above is the one the session compiles: the front end runs once.
    let mut session = match session::prepare(opts, &checked) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    for note in &session.notes {
        eprintln!("{note}");
    }
    if let Some(line) = session.trainer.backend().gpu_summary() {
        eprintln!("{line}");
    }
    if let Some(step) = session.resumed_from {
        eprintln!("resuming at step {step} of {}", session.trainer.total_steps());
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)");
        });
    }
    let bar = (!quiet).then(|| {
        let b = ProgressBar::new(session.trainer.total_steps());
        b.set_style(
            ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let mut progress = Progress {
        bar,
        total: 0,
        first_loss: None,
        val_loss: None,
        started: std::time::Instant::now(),
    };
    let summary = match session::run(&mut session, &mut progress, &stop) {
        Ok(s) => s,
        Err(e) => {
            if let Some(b) = &progress.bar {
                b.abandon();
            }
            return fail(e);
        }
    };
    if let Some(b) = &progress.bar {
        b.finish();
    }
    let out = summary.out.display();
    if summary.interrupted {
        eprintln!(
            "stopped at step {} of {}; checkpoint in {}\nresume with: {}",
            summary.steps,
            session.trainer.total_steps(),
            summary
                .checkpoint
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            resume_command(opts, &summary.out)
        );
        return ExitCode::from(130);
    }
    let first = summary.losses.first().copied().unwrap_or(f32::NAN);
    let last = summary.losses.last().copied().unwrap_or(f32::NAN);
    eprintln!(
        "trained {} steps in {:.1}s: loss {first:.4} -> {last:.4} (step 0 -> final evaluation on the first batch)",
        summary.steps,
        progress.started.elapsed().as_secs_f64()
    );
    if let (Some(a), Some(b)) = (summary.validations.first(), summary.validations.last()) {
        eprintln!(
            "validation loss {:.4} -> {:.4} (step {} -> {}, {} held-out targets)",
            a.loss, b.loss, a.step, b.step, b.targets
        );
    }
    eprintln!("outputs in {out}: adapter.safetensors, metrics.jsonl, loss.svg, checkpoints/");
    ExitCode::SUCCESS
}

/// The command that continues an interrupted run, ready to paste into a
/// shell: the same spec and the options that must match (`--steps`, which
/// the checkpoint's hash covers) or that keep the losses bit for bit (device,
/// precision, `--no-jit`); the resumed run continues in `out`.
fn resume_command(opts: &RunOptions, out: &Path) -> String {
    let mut words = vec![
        "lamdac".to_string(),
        "train".into(),
        shell_word(&opts.spec.display().to_string()),
        "--resume".into(),
        shell_word(&out.display().to_string()),
    ];
    if let Some(s) = opts.steps {
        words.push(format!("--steps {s}"));
    }
    match opts.device {
        Some(Device::Cpu) => words.push("--device cpu".into()),
        Some(Device::Cuda) => words.push("--device cuda".into()),
        Some(Device::Auto) => words.push("--device auto".into()),
        None => {}
    }
    match opts.precision {
        Some(Precision::Bf16) => words.push("--precision bf16".into()),
        Some(Precision::F32) => words.push("--precision f32".into()),
        None => {}
    }
    if !opts.fuse {
        words.push("--no-jit".into());
    }
    words.join(" ")
}

/// `s` as one POSIX shell word: as it is when it holds only safe characters,
/// else in single quotes.
fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=+,@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
