//! `lamdac`: the command-line interface (thin: clap + calls into the crates).
//!
//! Exit codes: 0 success (warnings allowed), 1 errors in the input file,
//! 2 usage or I/O problems (clap's own usage errors exit 2 as well).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lamda_compiler::diag::{Severity, Style, render};
use lamda_compiler::report;
use lamda_compiler::resolve::check_path;

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

fn style(c: Color) -> Style {
    match c {
        Color::Always => Style::Color,
        Color::Never => Style::Plain,
        Color::Auto if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() => Style::Color,
        Color::Auto => Style::Plain,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file, format, color } => check(&file, format, style(color)),
    }
}

fn io_error(path: &std::path::Path, e: &std::io::Error) -> ExitCode {
    eprintln!("error[lamda::io]: cannot read `{}`: {e}", path.display());
    ExitCode::from(2)
}

fn check(path: &std::path::Path, format: Format, style: Style) -> ExitCode {
    let checked = match check_path(path) {
        Ok(c) => c,
        Err(e) => return io_error(path, &e),
    };
    if !checked.diags.is_empty() {
        eprint!("{}", render(&checked.sources, &checked.diags, style));
    }
    let errors = checked.diags.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = checked.diags.iter().filter(|d| d.severity == Severity::Warning).count();
    let Some(spec) = checked.spec else {
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
        return ExitCode::from(1);
    };
    let rep = report::report(&spec);
    match format {
        Format::Text => print!("{}", report::render_text(&rep)),
        Format::Json => match serde_json::to_string_pretty(&rep) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error[lamda::io]: cannot serialize the report: {e}");
                return ExitCode::from(2);
            }
        },
    }
    ExitCode::SUCCESS
}
