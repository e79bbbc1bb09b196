//! Resolution: definitions, `use`, patterns against the model, clauses, the train block.
//!
//! [`check_source`] runs the whole front end on one file: parse (stdlib and
//! the file), collect definitions, check adapter methods and model families,
//! bind `use` statements, resolve every `adapt` and `exclude` pattern against
//! the model's module tree, apply the override rule (a later `adapt` wins for
//! the modules both match; `exclude` applies to every rule wherever it
//! stands), validate ranks, budgets, schedules and the train block, and
//! return the [`ResolvedSpec`] or every problem found. No weights are read.

pub mod pattern;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::adapter::{Factor, Init, Method, check_adapter, parse_schedule};
use crate::consteval::Const;
use crate::diag::{Code, Diagnostic, FileId, SourceMap};
use crate::model::{self, FamilyArg, ModelInstance, ModelSource, ModuleKind};
use crate::schedule::Schedule;
use crate::spec::{AdaptedModule, RankChoice, ResolvedSpec, Rule, TrainConfig};
use crate::syntax::ast::*;
use crate::syntax::parse_file;
use pattern::{Miss, explain_miss, index_out_of_range, matches_module};

/// The result of checking one file.
#[derive(Debug)]
pub struct Checked {
    pub sources: SourceMap,
    /// The user's file in `sources`.
    pub file: FileId,
    /// Present when there are no errors.
    pub spec: Option<ResolvedSpec>,
    pub diags: Vec<Diagnostic>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }
}

/// Checks the file at `path`, reading it from disk. A file that cannot be
/// read is an `Err` (an I/O problem); one that is not UTF-8 is a diagnostic
/// (`lamda::syntax::not_utf8`, a problem in the input) at its first bad byte.
pub fn check_path(path: &Path) -> std::io::Result<Checked> {
    let bytes = std::fs::read(path)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path.display().to_string();
    Ok(match String::from_utf8(bytes) {
        Ok(text) => check_source(&name, &text, &dir),
        Err(e) => not_utf8(&name, &e),
    })
}

/// The report for a spec that is not UTF-8: its text up to the first bad
/// byte is shown as it is, the rest with U+FFFD for each bad sequence.
fn not_utf8(name: &str, e: &std::string::FromUtf8Error) -> Checked {
    let offset = e.utf8_error().valid_up_to();
    let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
    let mut sources = SourceMap::default();
    let file = sources.add(name, text.as_str());
    let byte = e.as_bytes().get(offset).copied().unwrap_or_default();
    // U+FFFD takes 3 bytes where the lossy text replaced the bad sequence.
    let span = Span {
        start: offset,
        end: (offset + 3).min(text.len()),
    };
    let diag = Diagnostic::error(
        Code::SyntaxNotUtf8,
        file,
        format!("the file is not UTF-8 text: the byte at offset {offset} (0x{byte:02x}) is not valid UTF-8 there"),
    )
    .label(span, format!("byte {offset}"))
    .help("save the file as UTF-8");
    Checked {
        sources,
        file,
        spec: None,
        diags: vec![diag],
    }
}

/// Checks `text` (named `name` in diagnostics); relative paths resolve against `dir`.
pub fn check_source(name: &str, text: &str, dir: &Path) -> Checked {
    let mut sources = SourceMap::default();
    let mut parsed: Vec<(FileId, File)> = Vec::new();
    let mut diags = Vec::new();
    for (n, src) in crate::stdlib::FILES {
        let id = sources.add(*n, *src);
        match parse_file(src) {
            Ok(f) => parsed.push((id, f)),
            Err(errs) => diags.extend(errs.into_iter().map(|e| syntax_diag(e, id))),
        }
    }
    let file = sources.add(name, text);
    let user = match parse_file(text) {
        Ok(f) => f,
        Err(errs) => {
            diags.extend(errs.into_iter().map(|e| syntax_diag(e, file)));
            return Checked {
                sources,
                file,
                spec: None,
                diags,
            };
        }
    };
    parsed.push((file, user));
    let mut r = Resolver::new(&parsed, file, dir.to_path_buf());
    let spec = r.run();
    diags.extend(r.diags);
    let spec = if diags.iter().any(Diagnostic::is_error) {
        None
    } else {
        spec
    };
    Checked {
        sources,
        file,
        spec,
        diags,
    }
}

fn syntax_diag(e: crate::syntax::SyntaxError, file: FileId) -> Diagnostic {
    if e.unterminated_string {
        return Diagnostic::error(Code::SyntaxUnterminatedString, file, "this string has no closing quote")
            .label(e.span, "string starts here")
            .help("close it with `\"` on the same line");
    }
    let expected = match e.expected.as_slice() {
        [] => "something else".to_string(),
        [one] => one.clone(),
        many => {
            let (last, rest) = many.split_last().unwrap_or((&many[0], &[]));
            format!("{} or {last}", rest.join(", "))
        }
    };
    Diagnostic::error(Code::SyntaxUnexpected, file, format!("unexpected {}", e.found))
        .label(e.span, format!("expected {expected}"))
        .help(syntax_hint(&e))
}

fn syntax_hint(e: &crate::syntax::SyntaxError) -> String {
    let word = e.found.trim_matches('`');
    let clause_words = ["with", "rank", "alpha", "freeze_b"];
    if e.expected.iter().any(|x| x == "`rank`")
        && let Some(s) = crate::suggest::closest(word, clause_words)
    {
        return format!("did you mean `{s}`? an adapt rule takes the clauses with, rank, alpha, freeze_b");
    }
    if e.expected.iter().any(|x| x == "`adapt`") {
        return "a file holds `use`, `adapt`, `exclude`, `train { ... }` and definitions; see spec/language.md"
            .to_string();
    }
    "see spec/language.md for the syntax".to_string()
}

/// A model named by the rules.
#[derive(Debug, Clone)]
struct Bound {
    instance: Option<ModelInstance>,
}

struct Resolver<'a> {
    parsed: &'a [(FileId, File)],
    file: FileId,
    dir: PathBuf,
    diags: Vec<Diagnostic>,
    adapters: BTreeMap<String, (FileId, &'a AdapterDef)>,
    families: BTreeMap<String, (FileId, &'a ModelDef)>,
    presets: BTreeMap<String, (FileId, &'a PresetDef)>,
    methods: BTreeMap<String, Option<Arc<Method>>>,
    /// alias -> model, for `use` statements and implicitly used presets.
    bound: BTreeMap<String, Bound>,
}

impl<'a> Resolver<'a> {
    fn new(parsed: &'a [(FileId, File)], file: FileId, dir: PathBuf) -> Self {
        Resolver {
            parsed,
            file,
            dir,
            diags: Vec::new(),
            adapters: BTreeMap::new(),
            families: BTreeMap::new(),
            presets: BTreeMap::new(),
            methods: BTreeMap::new(),
            bound: BTreeMap::new(),
        }
    }

    fn user_items(&self) -> &'a [Item] {
        self.parsed
            .iter()
            .find(|(id, _)| *id == self.file)
            .map_or(&[], |(_, f)| f.items.as_slice())
    }

    fn run(&mut self) -> Option<ResolvedSpec> {
        self.collect_definitions();
        self.check_definitions();
        self.bind_uses();
        let items = self.user_items();
        let adapts: Vec<&AdaptStmt> = items
            .iter()
            .filter_map(|i| if let Item::Adapt(a) = i { Some(a) } else { None })
            .collect();
        let excludes: Vec<&ExcludeStmt> = items
            .iter()
            .filter_map(|i| if let Item::Exclude(e) = i { Some(e) } else { None })
            .collect();
        let trains: Vec<&TrainBlock> = items
            .iter()
            .filter_map(|i| if let Item::Train(t) = i { Some(t) } else { None })
            .collect();
        let train = self.check_trains(&trains);
        // an encoder's task head trains alone when no rule adapts anything (the baseline)
        if adapts.is_empty() && train.0.head.is_none() {
            let span = items.first().map_or(Span::default(), item_span);
            self.diags.push(
                Diagnostic::error(
                    Code::UseNoModel,
                    self.file,
                    "nothing to train: the file has no `adapt` rule",
                )
                .label(span, "no adapt rule in this file")
                .help(
                    "add one, e.g. `adapt llama2.attn.{q,v} rank 8` (an encoder with \
                     `head classify(...)` may train its head alone)",
                ),
            );
            return None;
        }
        self.resolve_rules(&adapts, &excludes, train.0, train.1)
    }

    // ------------------------------------------------------------ definitions

    fn collect_definitions(&mut self) {
        for (id, f) in self.parsed {
            let is_user = *id == self.file;
            for item in &f.items {
                let (kind, name) = match item {
                    Item::Adapter(a) => ("adapter", &a.name),
                    Item::Model(m) => ("model", &m.name),
                    Item::Preset(p) => ("preset", &p.name),
                    _ => continue,
                };
                let prev = match item {
                    Item::Adapter(a) => self
                        .adapters
                        .insert(name.name.clone(), (*id, a))
                        .map(|(f, d)| (f, d.name.span)),
                    Item::Model(m) => self
                        .families
                        .insert(name.name.clone(), (*id, m))
                        .map(|(f, d)| (f, d.name.span)),
                    Item::Preset(p) => self
                        .presets
                        .insert(name.name.clone(), (*id, p))
                        .map(|(f, d)| (f, d.name.span)),
                    _ => None,
                };
                if let Some((pf, pspan)) = prev {
                    if pf == *id {
                        self.diags.push(
                            Diagnostic::error(
                                Code::DefDuplicate,
                                *id,
                                format!("{kind} `{}` is defined twice", name.name),
                            )
                            .label(name.span, "second definition")
                            .label(pspan, "first definition")
                            .help("rename one of them"),
                        );
                    } else if is_user {
                        self.diags.push(
                            Diagnostic::warning(
                                Code::DefShadowsStdlib,
                                *id,
                                format!("{kind} `{}` replaces the stdlib definition", name.name),
                            )
                            .label(name.span, "this definition is used instead")
                            .help("rename it to keep both"),
                        );
                    }
                }
            }
        }
    }

    fn check_definitions(&mut self) {
        let adapters: Vec<(String, FileId, &AdapterDef)> =
            self.adapters.iter().map(|(n, (f, d))| (n.clone(), *f, *d)).collect();
        for (name, f, def) in adapters {
            match check_adapter(def, f) {
                Ok((m, warnings)) => {
                    self.diags.extend(warnings);
                    self.methods.insert(name, Some(Arc::new(m)));
                }
                Err(errs) => {
                    self.diags.extend(errs);
                    self.methods.insert(name, None);
                }
            }
        }
        let families: Vec<(FileId, &ModelDef)> = self.families.values().copied().collect();
        for (f, def) in families {
            self.diags.extend(model::check_family(def, f));
        }
    }

    /// Follows preset aliases to a family call: (preset name, family call, file).
    fn preset_call(&self, name: &str) -> Result<(FileId, &'a Call), String> {
        let mut seen = Vec::new();
        let mut cur = name.to_string();
        loop {
            let Some((f, p)) = self.presets.get(&cur) else {
                return Err(format!("preset `{cur}` is not defined"));
            };
            if p.value.parens {
                return Ok((*f, &p.value));
            }
            if seen.contains(&cur) {
                return Err(format!("preset `{name}` refers to itself"));
            }
            seen.push(cur.clone());
            cur = p.value.name.name.clone();
        }
    }

    fn instantiate_preset(&mut self, name: &str, blame: Span) -> Option<ModelInstance> {
        let (pfile, call) = match self.preset_call(name) {
            Ok(c) => c,
            Err(msg) => {
                self.diags
                    .push(Diagnostic::error(Code::PresetBadArgs, self.file, msg).label(blame, "here"));
                return None;
            }
        };
        let Some(&(ffile, fam)) = self.families.get(&call.name.name) else {
            self.diags.push(
                Diagnostic::error(
                    Code::PresetBadArgs,
                    pfile,
                    format!("unknown model family `{}`", call.name.name),
                )
                .label(call.name.span, "not a family"),
            );
            return None;
        };
        let mut args = Vec::new();
        for a in &call.args {
            let value = Const::from_value(&a.value);
            match (&a.name, value) {
                (Some(n), Some(v)) => args.push(FamilyArg {
                    name: n.name.clone(),
                    value: v,
                    span: a.span,
                }),
                _ => self.diags.push(
                    Diagnostic::error(
                        Code::PresetBadArgs,
                        pfile,
                        "preset arguments are named constants: `hidden = 4096`",
                    )
                    .label(a.span, "here"),
                ),
            }
        }
        let params = match model::bind_params(&fam.params, &args, &fam.name.name, call.span, pfile, ffile) {
            Ok(p) => p,
            Err(e) => {
                self.diags.extend(e);
                return None;
            }
        };
        let shown = match self.presets.iter().find(|(_, (_, p))| std::ptr::eq(&p.value, call)) {
            Some((target, _)) if target != name => format!("{name} = {target}"),
            _ => name.to_string(),
        };
        match model::instantiate(fam, ffile, params, ModelSource::Preset(shown), (pfile, call.span)) {
            Ok(m) => Some(m),
            Err(e) => {
                self.diags.extend(e);
                None
            }
        }
    }

    fn instantiate_checkpoint(&mut self, path: &str, span: Span) -> Option<ModelInstance> {
        let dir = train::join_clean(&self.dir, path);
        let cfg = match model::hf_config::read_config(&dir) {
            Ok(c) => c,
            Err(e) => {
                let help = match &e {
                    model::hf_config::ConfigError::FolderMissing { .. }
                    | model::hf_config::ConfigError::NotAFolder { .. } => format!(
                        "{}; a checkpoint folder holds config.json and *.safetensors, as `save_pretrained` writes them",
                        e.hint()
                    ),
                    _ => e.hint(),
                };
                self.diags.push(
                    Diagnostic::error(e.code(), self.file, e.to_string())
                        .label(span, "this checkpoint")
                        .help(help),
                );
                return None;
            }
        };
        let &(ffile, fam) = self.families.get(cfg.family)?;
        let args: Vec<FamilyArg> = cfg
            .args
            .iter()
            .map(|(n, v)| FamilyArg {
                name: (*n).to_string(),
                value: *v,
                span,
            })
            .collect();
        let params = match model::bind_params(&fam.params, &args, cfg.family, span, self.file, ffile) {
            Ok(p) => p,
            Err(e) => {
                self.diags.extend(e);
                return None;
            }
        };
        match model::instantiate(fam, ffile, params, ModelSource::Checkpoint(dir), (self.file, span)) {
            Ok(m) => Some(m),
            Err(e) => {
                self.diags.extend(e);
                None
            }
        }
    }

    fn unknown_model(&self, name: &str, span: Span) -> Diagnostic {
        let mut names: Vec<&str> = self.bound.keys().map(String::as_str).collect();
        names.extend(self.presets.keys().map(String::as_str));
        let help = match crate::suggest::closest(name, names.iter().copied()) {
            Some(s) => format!(
                "did you mean `{s}`? presets: {}",
                self.presets.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            None => format!(
                "name a stdlib preset ({}) or bind a checkpoint: `use \"path/to/folder\" as {name}`",
                self.presets.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        Diagnostic::error(Code::UseUnknownModel, self.file, format!("unknown model `{name}`"))
            .label(span, "not a preset or a `use` name")
            .help(help)
    }

    fn family_not_preset(&self, name: &str, span: Span) -> Diagnostic {
        let presets: Vec<&str> = self
            .presets
            .iter()
            .filter(|(_, (_, p))| p.value.parens && p.value.name.name == name)
            .map(|(n, _)| n.as_str())
            .collect();
        Diagnostic::error(
            Code::UseFamilyNotPreset,
            self.file,
            format!("`{name}` is a model family, not a model"),
        )
        .label(span, "a family needs sizes")
        .help(format!("name one of its presets: {}", presets.join(", ")))
    }

    fn bind_uses(&mut self) {
        let items = self.user_items();
        let mut spans: BTreeMap<String, Span> = BTreeMap::new();
        for item in items {
            let Item::Use(u) = item else { continue };
            let (alias, instance) = match &u.target {
                UseTarget::Named(n) => {
                    let alias = u.alias.as_ref().unwrap_or(n);
                    let inst = if self.presets.contains_key(&n.name) {
                        self.instantiate_preset(&n.name, n.span)
                    } else if self.families.contains_key(&n.name) {
                        let d = self.family_not_preset(&n.name, n.span);
                        self.diags.push(d);
                        None
                    } else {
                        let d = self.unknown_model(&n.name, n.span);
                        self.diags.push(d);
                        None
                    };
                    (alias.clone(), inst)
                }
                UseTarget::Path { path, span } => {
                    let Some(alias) = &u.alias else {
                        let stem = Path::new(path)
                            .file_name()
                            .map(|s| s.to_string_lossy().replace(['-', '.'], "_"));
                        self.diags.push(
                            Diagnostic::error(
                                Code::UseMissingAlias,
                                self.file,
                                "a checkpoint needs a name: `use \"path\" as NAME`",
                            )
                            .label(*span, "name this checkpoint")
                            .help(format!(
                                "write `use \"{path}\" as {}`",
                                stem.unwrap_or_else(|| "m".into())
                            )),
                        );
                        continue;
                    };
                    (alias.clone(), self.instantiate_checkpoint(path, *span))
                }
            };
            if let Some(prev) = spans.insert(alias.name.clone(), alias.span) {
                self.diags.push(
                    Diagnostic::error(
                        Code::UseDuplicateAlias,
                        self.file,
                        format!("`{}` is bound twice", alias.name),
                    )
                    .label(alias.span, "bound again here")
                    .label(prev, "first bound here")
                    .help("give the second model another name with `as`"),
                );
                continue;
            }
            self.bound.insert(alias.name, Bound { instance });
        }
    }

    /// The model a pattern's root names; binds stdlib presets on first use.
    fn root_model(&mut self, root: &Segment) -> Result<String, ()> {
        let SegKind::Name(name) = &root.kind else {
            self.diags.push(
                Diagnostic::error(
                    Code::UseUnknownModel,
                    self.file,
                    "a pattern starts with the model's name",
                )
                .label(root.span, "not a model name")
                .help("write `llama2.attn.*`, or bind a name with `use`"),
            );
            return Err(());
        };
        if root.index.is_some() {
            self.diags.push(
                Diagnostic::error(Code::UseUnknownModel, self.file, "a model name takes no index")
                    .label(root.span, "here"),
            );
            return Err(());
        }
        if self.bound.contains_key(name) {
            return Ok(name.clone());
        }
        if self.presets.contains_key(name) {
            let inst = self.instantiate_preset(name, root.span);
            self.bound.insert(name.clone(), Bound { instance: inst });
            return Ok(name.clone());
        }
        let d = if self.families.contains_key(name) {
            self.family_not_preset(name, root.span)
        } else {
            self.unknown_model(name, root.span)
        };
        self.diags.push(d);
        Err(())
    }

    // ------------------------------------------------------------ train

    fn check_trains(&mut self, trains: &[&TrainBlock]) -> (TrainConfig, bool) {
        let Some(first) = trains.first() else {
            return (TrainConfig::default(), false);
        };
        for extra in &trains[1..] {
            self.diags.push(
                Diagnostic::error(Code::TrainDuplicateBlock, self.file, "a file has one train block")
                    .label(extra.span, "second train block")
                    .label(first.span, "first train block")
                    .help("merge the settings into one block"),
            );
        }
        let dir = self.dir.clone();
        (train::check_train(first, self.file, &dir, &mut self.diags), true)
    }

    // ------------------------------------------------------------ rules

    fn resolve_rules(
        &mut self,
        adapts: &[&AdaptStmt],
        excludes: &[&ExcludeStmt],
        train: TrainConfig,
        has_train_block: bool,
    ) -> Option<ResolvedSpec> {
        // The model: every rule must name the same one.
        let mut model_name: Option<(String, Span)> = None;
        let mut ok = true;
        for p in adapts
            .iter()
            .map(|a| &a.pattern)
            .chain(excludes.iter().map(|e| &e.pattern))
        {
            let Some(root) = p.root() else { continue };
            match self.root_model(root) {
                Ok(name) => match &model_name {
                    None => model_name = Some((name, root.span)),
                    Some((first, fspan)) if *first != name => {
                        self.diags.push(
                            Diagnostic::error(
                                Code::UseMultipleModels,
                                self.file,
                                format!("this rule names `{name}`, an earlier one `{first}`"),
                            )
                            .label(root.span, format!("`{name}`"))
                            .label(*fspan, format!("`{first}`"))
                            .help("one file trains one model: use one name in every pattern"),
                        );
                        ok = false;
                    }
                    Some(_) => {}
                },
                Err(()) => ok = false,
            }
        }
        // a head-only file (no rule) trains the one model it `use`s
        if adapts.is_empty() && excludes.is_empty() && model_name.is_none() {
            match self.bound.keys().collect::<Vec<_>>().as_slice() {
                [one] => model_name = Some(((*one).clone(), Span::default())),
                names => {
                    let span = self.user_items().first().map_or(Span::default(), item_span);
                    self.diags.push(
                        Diagnostic::error(
                            Code::UseNoModel,
                            self.file,
                            format!(
                                "a file without `adapt` rules trains the head of the one model \
                                 it uses; it uses {}",
                                names.len()
                            ),
                        )
                        .label(span, "no rule names the model")
                        .help("keep exactly one `use MODEL as NAME` line, or add an `adapt` rule"),
                    );
                    return None;
                }
            }
        }
        let (model_name, _) = model_name?;
        let instance = self.bound.get(&model_name).and_then(|b| b.instance.clone());
        let model = instance?;
        if !ok {
            return None;
        }
        // linear[i]: whether module i is a linear layer
        let linear: Vec<bool> = model
            .modules
            .iter()
            .map(|m| matches!(m.kind, ModuleKind::Linear { .. }))
            .collect();

        // Match every adapt pattern.
        struct Draft {
            matched: Vec<usize>,
            method: Option<Arc<Method>>,
            args: BTreeMap<String, Const>,
            rank: Option<RankDraft>,
            schedule: Option<Schedule>,
            schedule_span: Option<Span>,
        }
        let mut drafts = Vec::new();
        for a in adapts {
            let matched = self.match_pattern(&a.pattern, &model, &linear, true);
            let (method, args, rank, schedule, schedule_span) = self.clauses(a);
            drafts.push(Draft {
                matched: matched.unwrap_or_default(),
                method,
                args,
                rank,
                schedule,
                schedule_span,
            });
        }
        // Excludes remove from every rule.
        let mut excluded = vec![false; model.modules.len()];
        let mut in_some_rule = vec![false; model.modules.len()];
        for d in &drafts {
            for &m in &d.matched {
                in_some_rule[m] = true;
            }
        }
        for e in excludes {
            if let Some(m) = self.match_pattern(&e.pattern, &model, &linear, false) {
                let adapted: Vec<usize> = m.iter().copied().filter(|&i| in_some_rule[i]).collect();
                if adapted.is_empty() {
                    self.diags.push(
                        Diagnostic::warning(
                            Code::ExcludeUnused,
                            self.file,
                            "this `exclude` removes no module that a rule adapts",
                        )
                        .label(
                            e.pattern.span,
                            format!("matches {} module(s), none of them adapted", m.len()),
                        )
                        .help("remove it, or check that it names the modules you meant"),
                    );
                }
                for i in m {
                    excluded[i] = true;
                }
            }
        }
        // Ownership: the last rule that matches a module wins.
        let mut owner: Vec<Option<usize>> = vec![None; model.modules.len()];
        for (ri, d) in drafts.iter().enumerate() {
            for &m in &d.matched {
                if !excluded[m] {
                    owner[m] = Some(ri);
                }
            }
        }
        let matched: Vec<&[usize]> = drafts.iter().map(|d| d.matched.as_slice()).collect();
        self.override_notes(adapts, &matched, &owner, &excluded);

        // Ranks, final checks, and the resolved rules.
        let mut rules = Vec::new();
        let mut modules = Vec::new();
        for (ri, d) in drafts.into_iter().enumerate() {
            let owned: Vec<usize> = d.matched.iter().copied().filter(|&m| owner[m] == Some(ri)).collect();
            let (Some(method), Some(rank)) = (d.method, d.rank) else {
                continue;
            };
            let dims: Vec<(u64, u64)> = owned
                .iter()
                .map(|&m| match model.modules[m].kind {
                    ModuleKind::Linear { d_in, d_out, .. } => (d_in, d_out),
                    _ => (0, 0),
                })
                .collect();
            let Some(choice) = self.check_rank(&rank, &owned, &dims, &model) else {
                continue;
            };
            let schedule = method.freeze.map(|(_, default)| d.schedule.unwrap_or(default));
            self.no_gradient(adapts[ri], &method, &d.args, schedule, d.schedule_span);
            let r = match choice {
                RankChoice::Fixed(r) => r,
                RankChoice::Auto { r0, .. } => r0,
            };
            let mut idx = Vec::new();
            for (&m, &(d_in, d_out)) in owned.iter().zip(&dims) {
                idx.push(modules.len());
                let module = &model.modules[m];
                modules.push(AdaptedModule {
                    module: m,
                    path: module.path_string(),
                    hf_name: module.hf_name.clone(),
                    d_in,
                    d_out,
                    rule: rules.len(),
                    rank: r.min(d_in.min(d_out)),
                });
            }
            rules.push(Rule {
                number: ri + 1,
                pattern: adapts[ri].pattern.to_string(),
                span: adapts[ri].span,
                method,
                args: d.args,
                rank: choice,
                schedule,
                matched: d.matched.len(),
                overridden: d
                    .matched
                    .iter()
                    .filter(|&&m| !excluded[m] && owner[m] != Some(ri))
                    .count(),
                excluded: d.matched.iter().filter(|&&m| excluded[m]).count(),
                modules: idx,
            });
        }
        // Model order.
        let mut order: Vec<usize> = (0..modules.len()).collect();
        order.sort_by_key(|&i| modules[i].module);
        let mut remap = vec![0; modules.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old] = new;
        }
        let modules: Vec<AdaptedModule> = order.iter().map(|&i| modules[i].clone()).collect();
        for r in &mut rules {
            for i in &mut r.modules {
                *i = remap[*i];
            }
            r.modules.sort_unstable();
        }
        if modules.is_empty() && !adapts.is_empty() && !self.diags.iter().any(Diagnostic::is_error) {
            self.diags.push(
                Diagnostic::error(Code::UseNoModel, self.file, "no module is left to adapt")
                    .label(adapts[0].span, "every module of every rule is excluded")
                    .help("narrow the `exclude` patterns"),
            );
        }
        Some(ResolvedSpec {
            model_name,
            model,
            rules,
            modules,
            train,
            has_train_block,
        })
    }

    /// One note per rule that loses modules to later rules (or excludes): an
    /// advice when it keeps some, a warning when it keeps none, naming the
    /// rules that finally win. Past [`SHOWN_OVERRIDES`] notes of a kind, one
    /// summary note lists the other rules, so a file of many overlapping
    /// rules gets output linear in its length.
    fn override_notes(
        &mut self,
        adapts: &[&AdaptStmt],
        matched: &[&[usize]],
        owner: &[Option<usize>],
        excluded: &[bool],
    ) {
        let mut partly: Vec<usize> = Vec::new();
        let mut fully: Vec<usize> = Vec::new();
        for (ri, m) in matched.iter().enumerate() {
            // modules lost to each later rule
            let mut winners: BTreeMap<usize, usize> = BTreeMap::new();
            let mut owned = 0;
            for &mi in *m {
                match owner[mi] {
                    Some(o) if o == ri => owned += 1,
                    Some(o) => *winners.entry(o).or_default() += 1,
                    None => {}
                }
            }
            // nothing lost, or lost only to excludes while keeping some: no note
            if m.is_empty() || (winners.is_empty() && owned > 0) {
                continue;
            }
            let kind = if owned == 0 { &mut fully } else { &mut partly };
            kind.push(ri);
            if kind.len() > SHOWN_OVERRIDES {
                continue;
            }
            let lost: usize = winners.values().sum();
            let excl = m.iter().filter(|&&mi| excluded[mi]).count();
            let names: Vec<String> = winners.keys().map(|w| (w + 1).to_string()).collect();
            let who = match names.as_slice() {
                [] => String::new(),
                [one] => format!("rule {one}"),
                [rest @ .., last] if rest.len() < 3 => format!("rules {} and {last}", rest.join(", ")),
                many => format!("rules {} and {} more", many[..3].join(", "), many.len() - 3),
            };
            let verb = if names.len() == 1 { "overrides" } else { "override" };
            let d = if owned == 0 {
                let why = match (lost, excl) {
                    (0, _) => "excludes take all its modules".to_string(),
                    (_, 0) => format!("{who} {verb} it for all its {lost} module(s)"),
                    _ => format!("{who} {verb} it for {lost} module(s), excludes take the other {excl}"),
                };
                Diagnostic::warning(
                    Code::AdaptFullyOverridden,
                    self.file,
                    format!("rule {} adapts nothing: {why}", ri + 1),
                )
                .label(adapts[ri].pattern.span, "every module here goes elsewhere")
                .help("remove the rule, or narrow the later ones")
            } else {
                Diagnostic::advice(
                    Code::AdaptOverridden,
                    self.file,
                    format!("{who} {verb} rule {} for {lost} of its module(s)", ri + 1),
                )
            };
            // The rule that finally wins the most recent of them: the last.
            let d = match winners.keys().next_back() {
                Some(&w) if owned == 0 => d.label(adapts[w].pattern.span, "this later rule wins"),
                Some(&w) => d
                    .label(adapts[w].pattern.span, "this later rule wins")
                    .label(adapts[ri].pattern.span, "for these modules of this rule")
                    .help("a later `adapt` overrides an earlier one for the modules both match"),
                None => d,
            };
            self.diags.push(d);
        }
        for (rules, code, what) in [
            (&partly, Code::AdaptOverridden, "are partly overridden by later rules"),
            (
                &fully,
                Code::AdaptFullyOverridden,
                "adapt nothing: later rules or excludes take all their modules",
            ),
        ] {
            if rules.len() <= SHOWN_OVERRIDES {
                continue;
            }
            let rest = &rules[SHOWN_OVERRIDES..];
            let d = Diagnostic {
                severity: if code == Code::AdaptOverridden {
                    crate::diag::Severity::Advice
                } else {
                    crate::diag::Severity::Warning
                },
                ..Diagnostic::error(
                    code,
                    self.file,
                    format!("... and {} more rules {what}: {}", rest.len(), rule_ranges(rest)),
                )
            };
            self.diags.push(
                d.label(adapts[rest[0]].pattern.span, "the first of them")
                    .help(format!("only the first {SHOWN_OVERRIDES} are shown one by one")),
            );
        }
    }

    /// Modules (indices into the model) a pattern matches; `Some(vec)` with
    /// at least one module, or `None` after reporting why not. Adapt patterns
    /// keep only linear modules.
    fn match_pattern(
        &mut self,
        p: &Pattern,
        model: &ModelInstance,
        linear: &[bool],
        adapt: bool,
    ) -> Option<Vec<usize>> {
        let segs = &p.segments[1..];
        if segs.is_empty() {
            self.diags.push(
                Diagnostic::error(
                    Code::PatternNoMatch,
                    self.file,
                    "a pattern names modules below the model",
                )
                .label(p.span, "this is the model itself")
                .help(format!("write `{}.**` for every linear layer, or `{}.attn.*`", p, p)),
            );
            return None;
        }
        let mut bad = false;
        for s in segs {
            for it in s.index.iter().flatten() {
                if let IndexItem::Range(a, b, span) = it
                    && a > b
                {
                    self.diags.push(
                        Diagnostic::error(Code::PatternBadRange, self.file, format!("the range {a}..{b} is empty"))
                            .label(*span, "runs backwards")
                            .help(format!("ranges are inclusive and ascending: `[{b}..{a}]`")),
                    );
                    bad = true;
                }
            }
        }
        if bad {
            return None;
        }
        // Index ranges past the end of a group.
        for s in segs {
            let (SegKind::Name(name), Some(items)) = (&s.kind, &s.index) else {
                continue;
            };
            let count = model
                .modules
                .iter()
                .flat_map(|m| m.path.iter())
                .filter(|seg| seg.name == *name)
                .filter_map(|seg| seg.index)
                .max()
                .map(|m| m + 1);
            if let Some(count) = count {
                for it in items {
                    if index_out_of_range(it, count) {
                        self.diags.push(
                            Diagnostic::error(
                                Code::PatternIndexOutOfRange,
                                self.file,
                                format!("`{name}` has {count} entries, indexed 0..{}", count - 1),
                            )
                            .label(it.span(), "past the end")
                            .help(format!(
                                "use indices up to {}: `{name}[0..{}]`",
                                count - 1,
                                count - 1
                            )),
                        );
                        bad = true;
                    }
                }
            }
        }
        if bad {
            return None;
        }
        let all: Vec<usize> = (0..model.modules.len())
            .filter(|&i| matches_module(segs, &model.modules[i]))
            .collect();
        if all.is_empty() {
            let d = self.no_match(p, model);
            self.diags.push(d);
            return None;
        }
        let parts = self.unmatched_parts(p, model);
        if !parts.is_empty() {
            self.diags.extend(parts);
            return None;
        }
        if !adapt {
            return Some(all);
        }
        let lin: Vec<usize> = all.iter().copied().filter(|&i| linear[i]).collect();
        if lin.is_empty() {
            let kinds: Vec<&str> = {
                let mut k: Vec<&str> = all.iter().map(|&i| model.modules[i].kind.name()).collect();
                k.sort();
                k.dedup();
                k
            };
            self.diags.push(
                Diagnostic::error(
                    Code::PatternNotLinear,
                    self.file,
                    format!("this pattern matches {} module(s), none of them linear", all.len()),
                )
                .label(p.span, format!("matches {} only", kinds.join(" and ")))
                .help("adapters attach to linear layers: q, k, v, o, gate, up, down, lm_head"),
            );
            return None;
        }
        Some(lin)
    }

    /// Every alternative of a `{...}` and every item of an index list must
    /// match some module on its own (the rest of the pattern as written): a
    /// typo in one of them is no less a typo because its siblings match
    /// (`attn.{q,x}` would otherwise adapt q and say nothing about x).
    fn unmatched_parts(&self, p: &Pattern, model: &ModelInstance) -> Vec<Diagnostic> {
        let segs = &p.segments[1..];
        let mut out = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let mut parts: Vec<(Vec<Segment>, Span, String)> = Vec::new();
            if let SegKind::Alts(names) = &s.kind
                && names.len() > 1
            {
                for n in names {
                    let mut narrowed = segs.to_vec();
                    narrowed[i].kind = SegKind::Name(n.name.clone());
                    parts.push((narrowed, n.span, format!("the alternative `{}`", n.name)));
                }
            }
            if let Some(items) = &s.index
                && items.len() > 1
            {
                for it in items {
                    let mut narrowed = segs.to_vec();
                    narrowed[i].index = Some(vec![*it]);
                    let shown = match *it {
                        IndexItem::One(j, _) => j.to_string(),
                        IndexItem::Range(a, b, _) => format!("{a}..{b}"),
                        IndexItem::All(_) => "*".to_string(),
                    };
                    parts.push((narrowed, it.span(), format!("the index `{shown}`")));
                }
            }
            for (narrowed, span, what) in parts {
                if model.modules.iter().any(|m| matches_module(&narrowed, m)) {
                    continue;
                }
                let help = match explain_miss(&narrowed, &model.modules) {
                    Miss::Segment {
                        available, suggestion, ..
                    } => {
                        let here = if available.is_empty() {
                            "nothing".to_string()
                        } else {
                            available.join(", ")
                        };
                        match suggestion {
                            Some(s) => format!("did you mean `{s}`? modules here: {here}"),
                            None => format!("modules here: {here}"),
                        }
                    }
                    Miss::Index { group, count, .. } => {
                        format!("`{group}` has entries 0..{}", count.saturating_sub(1))
                    }
                    Miss::Incomplete { available } => {
                        format!("it names a group, not a module; add one of: {}", available.join(", "))
                    }
                };
                out.push(
                    Diagnostic::error(
                        Code::PatternNoMatch,
                        self.file,
                        format!("{what} of `{p}` matches no module"),
                    )
                    .label(span, format!("{what} matches nothing"))
                    .help(format!("{help} (each alternative and index must match a module)")),
                );
            }
        }
        out
    }

    fn no_match(&self, p: &Pattern, model: &ModelInstance) -> Diagnostic {
        let segs = &p.segments[1..];
        let d = Diagnostic::error(Code::PatternNoMatch, self.file, format!("`{p}` matches no module"));
        match explain_miss(segs, &model.modules) {
            Miss::Segment {
                at,
                available,
                suggestion,
            } => {
                let seg = &segs[at];
                let here = if available.is_empty() {
                    "nothing".to_string()
                } else {
                    available.join(", ")
                };
                let help = match suggestion {
                    Some(s) => format!("did you mean `{s}`? modules here: {here}"),
                    None => format!("modules here: {here}"),
                };
                d.label(seg.span, format!("no `{seg}` here")).help(help)
            }
            Miss::Index { at, group, count } => d
                .label(
                    segs[at].span,
                    format!("`{group}` has entries 0..{}", count.saturating_sub(1)),
                )
                .help(format!("indices run from 0 to {}", count.saturating_sub(1))),
            Miss::Incomplete { available } => d
                .label(p.span, "this names a group, not a module")
                .help(format!("add a module: `{p}.*`, or one of: {}", available.join(", "))),
        }
    }

    /// Checks a rule's clauses: method, arguments, rank, freeze schedule.
    #[allow(clippy::type_complexity)]
    fn clauses(
        &mut self,
        a: &AdaptStmt,
    ) -> (
        Option<Arc<Method>>,
        BTreeMap<String, Const>,
        Option<RankDraft>,
        Option<Schedule>,
        Option<Span>,
    ) {
        let mut seen: BTreeMap<&str, Span> = BTreeMap::new();
        let mut with = None;
        let mut rank = None;
        let mut alpha = None;
        let mut freeze = None;
        for c in &a.clauses {
            let kw = c.kind.keyword();
            if let Some(prev) = seen.insert(kw, c.keyword) {
                self.diags.push(
                    Diagnostic::error(
                        Code::AdaptDuplicateClause,
                        self.file,
                        format!("`{kw}` is given twice in this rule"),
                    )
                    .label(c.span, "again here")
                    .label(prev, "first here")
                    .help("keep one of them"),
                );
                continue;
            }
            match &c.kind {
                ClauseKind::With(call) => with = Some(call),
                ClauseKind::Rank(r) => rank = Some(r),
                ClauseKind::Alpha(v) => alpha = Some(v),
                ClauseKind::FreezeB(s) => freeze = Some((s, c.span)),
            }
        }
        // The method.
        let method_name = with.map_or("lamda", |c| c.name.name.as_str());
        let method = match self.methods.get(method_name) {
            Some(Some(m)) => Some(m.clone()),
            Some(None) => None, // its definition has errors, already reported
            None => {
                let span = with.map_or(a.pattern.span, |c| c.name.span);
                let names: Vec<&str> = self.methods.keys().map(String::as_str).collect();
                let help = match crate::suggest::closest(method_name, names.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? methods: {}", names.join(", ")),
                    None => format!(
                        "methods: {} (stdlib/adapters/), or define `adapter {method_name}(r) {{ ... }}`",
                        names.join(", ")
                    ),
                };
                self.diags.push(
                    Diagnostic::error(
                        Code::AdaptUnknownMethod,
                        self.file,
                        format!("unknown adapter method `{method_name}`"),
                    )
                    .label(span, "not a method")
                    .help(help),
                );
                None
            }
        };
        let Some(method) = method else {
            return (None, BTreeMap::new(), None, None, None);
        };
        // Arguments: `with m(k = v)` and `alpha X`.
        let mut args: BTreeMap<String, Const> = BTreeMap::new();
        let mut rank_from_args = None;
        let mut given: Vec<(String, Const, Span)> = Vec::new();
        if let Some(call) = with {
            for arg in &call.args {
                let Some(name) = &arg.name else {
                    self.diags.push(
                        Diagnostic::error(Code::AdaptBadArg, self.file, "method arguments are named")
                            .label(arg.span, "name this argument")
                            .help(format!("e.g. `with {}(alpha = 2.0)`", method.name)),
                    );
                    continue;
                };
                let Some(v) = Const::from_value(&arg.value) else {
                    self.diags.push(
                        Diagnostic::error(
                            Code::AdaptBadArg,
                            self.file,
                            format!("`{}` takes a number, found {}", name.name, arg.value.kind.describe()),
                        )
                        .label(arg.value.span, "expected a number"),
                    );
                    continue;
                };
                if name.name == "r" {
                    if rank.is_some() {
                        self.diags.push(
                            Diagnostic::error(
                                Code::AdaptDuplicateClause,
                                self.file,
                                "the rank is given twice in this rule",
                            )
                            .label(arg.span, "here")
                            .help("give it once, with `rank N`"),
                        );
                    }
                    rank_from_args = Some((v, arg.value.span));
                    continue;
                }
                given.push((name.name.clone(), v, name.span));
            }
        }
        if let Some(v) = alpha {
            if given.iter().any(|(n, _, _)| n == "alpha") {
                self.diags.push(
                    Diagnostic::error(
                        Code::AdaptDuplicateClause,
                        self.file,
                        "alpha is given twice in this rule",
                    )
                    .label(v.span, "here")
                    .help("give it once"),
                );
            }
            match Const::from_value(v) {
                Some(c @ (Const::Int(_) | Const::Float(_))) => given.push(("alpha".into(), c, v.span)),
                _ => self.diags.push(
                    Diagnostic::error(
                        Code::AdaptBadArg,
                        self.file,
                        format!("alpha takes a number, found {}", v.kind.describe()),
                    )
                    .label(v.span, "expected a number"),
                ),
            }
        }
        for (name, v, span) in given {
            match method.params.iter().find(|(n, _)| *n == name) {
                Some((_, default)) => {
                    let numeric_ok = matches!((default, v), (Some(Const::Bool(_)), Const::Bool(_)))
                        || (!matches!(default, Some(Const::Bool(_))) && !matches!(v, Const::Bool(_)));
                    if !numeric_ok {
                        self.diags.push(
                            Diagnostic::error(
                                Code::AdaptBadArg,
                                self.file,
                                format!(
                                    "`{name}` takes {}, found {}",
                                    default.map_or("a number", |d| d.describe()),
                                    v.describe()
                                ),
                            )
                            .label(span, "wrong type"),
                        );
                    }
                    args.insert(name, v);
                }
                None => {
                    let names: Vec<&str> = method
                        .params
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .filter(|n| *n != "r")
                        .collect();
                    let help = match crate::suggest::closest(&name, names.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`? `{}` takes: {}", method.name, names.join(", ")),
                        None if names.is_empty() => format!("`{}` takes no arguments besides its rank", method.name),
                        None => format!("`{}` takes: {}", method.name, names.join(", ")),
                    };
                    self.diags.push(
                        Diagnostic::error(
                            Code::AdaptUnknownArg,
                            self.file,
                            format!("method `{}` has no parameter `{name}`", method.name),
                        )
                        .label(span, "unknown parameter")
                        .help(help),
                    );
                }
            }
        }
        for (n, default) in &method.params {
            if n != "r" && !args.contains_key(n) {
                match default {
                    Some(d) => {
                        args.insert(n.clone(), *d);
                    }
                    None => self.diags.push(
                        Diagnostic::error(
                            Code::AdaptBadArg,
                            self.file,
                            format!("method `{}` needs `{n}`", method.name),
                        )
                        .label(with.map_or(a.pattern.span, |c| c.span), format!("`{n}` is missing"))
                        .help(format!("write `with {}({n} = ...)`", method.name)),
                    ),
                }
            }
        }
        // Rank.
        let rank = match (rank, rank_from_args) {
            (Some(RankSpec::Auto { args, span }), _) => self.auto_args(args, *span),
            (Some(RankSpec::Fixed(v)), _) => self.fixed_rank(&v.kind, v.span),
            (None, Some((c, span))) => match c {
                Const::Int(i) => self.fixed_rank(&ValueKind::Int(i), span),
                other => self.fixed_rank(&ValueKind::Float(other.as_f64().unwrap_or(0.5)), span),
            },
            (None, None) => {
                let default = method
                    .params
                    .iter()
                    .find(|(n, _)| n == "r")
                    .and_then(|(_, d)| d.and_then(Const::as_int));
                Some(RankDraft::Fixed(default.map_or(8, |d| d.max(1) as u64), a.pattern.span))
            }
        };
        // Freeze schedule.
        let mut schedule = None;
        let mut schedule_span = None;
        if let Some((call, span)) = freeze {
            match method.freeze {
                None => self.diags.push(
                    Diagnostic::error(
                        Code::AdaptFreezeWithoutB,
                        self.file,
                        format!("method `{}` has no column-frozen B for `freeze_b` to act on", method.name),
                    )
                    .label(span, "nothing to freeze")
                    .help(format!(
                        "`freeze_b` applies to methods that declare `freeze B by columns` (lamda); remove it or use `with lamda`{}",
                        if method.name.starts_with("lora") { "; LoRA-FA freezes A instead (`with lora_fa`)" } else { "" }
                    )),
                ),
                Some(_) => match parse_schedule(call, self.file) {
                    Ok(s) => {
                        schedule = Some(s);
                        schedule_span = Some(span);
                    }
                    Err(d) => self.diags.push(d),
                },
            }
        }
        (Some(method), args, rank, schedule, schedule_span)
    }

    fn fixed_rank(&mut self, v: &ValueKind, span: Span) -> Option<RankDraft> {
        match *v {
            ValueKind::Int(i) if i >= 1 => Some(RankDraft::Fixed(i as u64, span)),
            ValueKind::Int(i) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::RankZero,
                        self.file,
                        format!("rank {i} is not allowed: a rank is at least 1"),
                    )
                    .label(span, "must be >= 1")
                    .help("to leave modules out, narrow the pattern or use `exclude`"),
                );
                None
            }
            ValueKind::Float(x) => {
                self.diags.push(
                    Diagnostic::error(
                        Code::RankNotInteger,
                        self.file,
                        format!("rank {x} is not a whole number"),
                    )
                    .label(span, "expected an integer")
                    .help(format!("write `rank {}`", (x.round() as i64).max(1))),
                );
                None
            }
            ref other => {
                self.diags.push(
                    Diagnostic::error(
                        Code::AdaptBadArg,
                        self.file,
                        format!("`rank` takes an integer or auto(...), found {}", other.describe()),
                    )
                    .label(span, "expected an integer")
                    .help("write `rank 8` or `rank auto(budget = 1024)`"),
                );
                None
            }
        }
    }

    fn auto_args(&mut self, args: &[Arg], span: Span) -> Option<RankDraft> {
        let mut budget = None;
        let mut min = None;
        let mut max = None;
        let mut ok = true;
        for a in args {
            let key = a.name.as_ref().map(|n| n.name.as_str()).unwrap_or("budget");
            let slot = match key {
                "budget" => &mut budget,
                "min" => &mut min,
                "max" => &mut max,
                other => {
                    let help = match crate::suggest::closest(other, ["budget", "min", "max"]) {
                        Some(s) => format!("did you mean `{s}`? auto takes budget, min, max"),
                        None => "auto takes budget, min, max".to_string(),
                    };
                    self.diags.push(
                        Diagnostic::error(
                            Code::AdaptUnknownArg,
                            self.file,
                            format!("`auto` has no argument `{other}`"),
                        )
                        .label(a.span, "unknown argument")
                        .help(help),
                    );
                    ok = false;
                    continue;
                }
            };
            match a.value.kind {
                ValueKind::Int(i) if i >= 1 => *slot = Some((i as u64, a.value.span)),
                ValueKind::Int(_) => {
                    self.diags.push(
                        Diagnostic::error(Code::RankZero, self.file, format!("`{key}` must be at least 1"))
                            .label(a.value.span, "must be >= 1"),
                    );
                    ok = false;
                }
                ref other => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::AdaptBadArg,
                            self.file,
                            format!("`{key}` takes an integer, found {}", other.describe()),
                        )
                        .label(a.value.span, "expected an integer"),
                    );
                    ok = false;
                }
            }
        }
        let Some(budget) = budget else {
            if ok {
                self.diags.push(
                    Diagnostic::error(Code::AdaptBadArg, self.file, "`rank auto` needs a budget")
                        .label(span, "no budget")
                        .help("write `rank auto(budget = P)`: the ranks of the rule's modules sum to at most P"),
                );
            }
            return None;
        };
        if let (Some((lo, ls)), Some((hi, hs))) = (min, max)
            && lo > hi
        {
            self.diags.push(
                Diagnostic::error(
                    Code::RankBadBounds,
                    self.file,
                    format!("min ({lo}) is above max ({hi})"),
                )
                .label(ls, "min")
                .label(hs, "max"),
            );
            return None;
        }
        ok.then_some(RankDraft::Auto { budget, min, max })
    }

    fn check_rank(
        &mut self,
        rank: &RankDraft,
        owned: &[usize],
        dims: &[(u64, u64)],
        model: &ModelInstance,
    ) -> Option<RankChoice> {
        match *rank {
            RankDraft::Fixed(r, span) => {
                let worst = owned.iter().zip(dims).min_by_key(|(_, (i, o))| (*i).min(*o));
                if let Some((&m, &(d_in, d_out))) = worst
                    && r > d_in.min(d_out)
                {
                    let name = model.modules[m].path_string();
                    let too = owned.iter().zip(dims).filter(|(_, (i, o))| r > (*i).min(*o)).count();
                    self.diags.push(
                        Diagnostic::error(
                            Code::RankTooLarge,
                            self.file,
                            format!(
                                "rank {r} exceeds min(d_in, d_out) = {} of `{name}` ({d_out} x {d_in})",
                                d_in.min(d_out)
                            ),
                        )
                        .label(span, format!("too large for {too} module(s)"))
                        .help(format!("use a rank of at most {}", d_in.min(d_out))),
                    );
                    return None;
                }
                Some(RankChoice::Fixed(r))
            }
            RankDraft::Auto {
                budget: (p, pspan),
                min,
                max,
                ..
            } => {
                let n = owned.len() as u64;
                if n == 0 {
                    return Some(RankChoice::Auto {
                        budget: p,
                        min: None,
                        max: None,
                        r0: 0,
                    });
                }
                if p < n {
                    self.diags.push(
                        Diagnostic::error(
                            Code::RankInfeasibleBudget,
                            self.file,
                            format!("rank budget {p} is below the {n} modules of this rule: r0 = floor({p}/{n}) = 0"),
                        )
                        .label(pspan, format!("at least {n}"))
                        .help(format!("every module needs rank >= 1: raise the budget to at least {n} (the uniform rank is budget / {n})")),
                    );
                    return None;
                }
                if let Some((lo, lspan)) = min
                    && lo * n > p
                {
                    self.diags.push(
                        Diagnostic::error(
                            Code::RankInfeasibleBudget,
                            self.file,
                            format!("min = {lo} for {n} modules needs a budget of {}, above {p}", lo * n),
                        )
                        .label(lspan, "min too high for the budget")
                        .help(format!("lower min to at most {}, or raise the budget", p / n)),
                    );
                    return None;
                }
                let smallest = dims.iter().map(|(i, o)| (*i).min(*o)).min().unwrap_or(1);
                if let Some((lo, lspan)) = min
                    && lo > smallest
                {
                    self.diags.push(
                        Diagnostic::error(
                            Code::RankBadBounds,
                            self.file,
                            format!("min = {lo} exceeds min(d_in, d_out) = {smallest} of a module"),
                        )
                        .label(lspan, "too large"),
                    );
                    return None;
                }
                Some(RankChoice::Auto {
                    budget: p,
                    min: min.map(|m| m.0),
                    max: max.map(|m| m.0),
                    r0: p / n,
                })
            }
        }
    }

    /// Warns when, under this rule's schedule and arguments, a trainable
    /// tensor can never receive a gradient (a zero coefficient, or a factor
    /// that is frozen at zero in every term), or nothing trains at all.
    fn no_gradient(
        &mut self,
        a: &AdaptStmt,
        m: &Method,
        args: &BTreeMap<String, Const>,
        schedule: Option<Schedule>,
        sspan: Option<Span>,
    ) {
        let frozen_now =
            |i: usize| !m.tensors[i].trainable || (schedule == Some(Schedule::Now) && m.freeze.map(|f| f.0) == Some(i));
        let env = m.env(101, 103, 7, args);
        let zero_coeff = m.terms.iter().all(|t| t.coefficient(&env) == Some(0.0));
        let trainable: Vec<usize> = (0..m.tensors.len()).filter(|&i| !frozen_now(i)).collect();
        let span = sspan.unwrap_or(a.pattern.span);
        if trainable.is_empty() {
            self.diags.push(
                Diagnostic::warning(
                    Code::AdaptNoGradient,
                    self.file,
                    format!("nothing trains in this rule: every tensor of `{}` is frozen", m.name),
                )
                .label(span, "freezes the last trainable tensor")
                .help("use `freeze_b linear(p)` or `at(p)` so B trains for part of the run"),
            );
            return;
        }
        let used = |t: usize| {
            m.terms
                .iter()
                .any(|term| term.chain.iter().any(|f| factor_tensor(*f) == t))
        };
        for &t in trainable.iter().filter(|&&t| used(t)) {
            let dead = zero_coeff
                || m.terms
                    .iter()
                    .filter(|term| term.chain.iter().any(|f| factor_tensor(*f) == t))
                    .all(|term| {
                        term.coefficient(&env) == Some(0.0)
                            || term.chain.iter().any(|f| {
                                let o = factor_tensor(*f);
                                o != t && frozen_now(o) && m.tensors[o].init == Init::Zeros
                            })
                    });
            if dead {
                self.diags.push(
                    Diagnostic::warning(
                        Code::AdaptNoGradient,
                        self.file,
                        format!(
                            "`{}` of `{}` can never receive a gradient here",
                            m.tensors[t].name, m.name
                        ),
                    )
                    .label(
                        span,
                        if zero_coeff {
                            "the path is scaled by zero"
                        } else {
                            "a factor it multiplies stays zero"
                        },
                    )
                    .help(if zero_coeff {
                        "alpha = 0 switches the adapter off; use a non-zero alpha"
                    } else {
                        "let the zero-initialised factor train (e.g. `freeze_b linear(0.3)`)"
                    }),
                );
                return;
            }
        }
    }
}

fn factor_tensor(f: Factor) -> usize {
    match f {
        Factor::Tensor(i) | Factor::Diag(i) => i,
    }
}

/// A rank clause before the rule's modules are known.
#[derive(Debug, Clone, Copy)]
enum RankDraft {
    Fixed(u64, Span),
    Auto {
        budget: (u64, Span),
        min: Option<(u64, Span)>,
        max: Option<(u64, Span)>,
    },
}

/// Notes of one kind about overridden rules shown one by one; the rest are
/// summed up in one note.
const SHOWN_OVERRIDES: usize = 10;

/// Rule numbers (0-based indices, ascending) as `rules 3, 7-12, 20`.
fn rule_ranges(rules: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < rules.len() {
        let mut j = i;
        while j + 1 < rules.len() && rules[j + 1] == rules[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            (rules[i] + 1).to_string()
        } else {
            format!("{}-{}", rules[i] + 1, rules[j] + 1)
        });
        i = j + 1;
    }
    format!("rules {}", parts.join(", "))
}

fn item_span(i: &Item) -> Span {
    match i {
        Item::Use(u) => u.span,
        Item::Adapt(a) => a.span,
        Item::Exclude(e) => e.span,
        Item::Train(t) => t.span,
        Item::Adapter(a) => a.span,
        Item::Model(m) => m.span,
        Item::Preset(p) => p.span,
    }
}

#[cfg(test)]
mod tests;
