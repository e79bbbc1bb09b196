//! Fills the parameter store of a Plan: base weights from the checkpoint,
//! adapter tensors by their initialisers, residual weights `W - path(init)`.
//!
//! SVD-based initialisers use the float64 thin SVD with the sign convention
//! of SEMANTICS §2 (`linalg::top_svd`: the exact thin SVD when the weight's
//! smaller side is at most 1024, else the top r triplets by randomized
//! subspace iteration; see spec/semantics.md), computed once per module; the
//! residual is evaluated in float64 from the float32 tensors at their initial
//! values and rounded once (SEMANTICS §3). Random initialisers draw from a
//! xoshiro256** stream seeded by the recipe, row by row.

use std::collections::BTreeMap;

use lamda_compiler::adapter::Init;
use lamda_compiler::ir::{HeadInit, ParamRole, PathFactor, TableKind};
use lamda_compiler::passes::adapter_init::InitRecipe;
use lamda_compiler::plan::Plan;
use rayon::prelude::*;

use crate::checkpoint::{CheckpointError, Weights};
use crate::linalg::svd::top_svd_with;
use crate::linalg::{EXACT_SVD_MAX_DIM, LinalgError, MatF32Ref, ThinSvd, Xoshiro256StarStar, init::kaiming_uniform};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("initialising `{name}`: {source}")]
    Linalg { name: String, source: LinalgError },
    #[error("initialising `{name}`: {msg}")]
    Other { name: String, msg: String },
}

/// Where base weights come from.
pub trait WeightSource: Sync {
    /// The tensor `name` as float32, checked against `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError>;
    /// Whether the source has a tensor of this name (a task head it may lack).
    fn contains(&self, name: &str) -> bool;
    /// [`Self::load`] into `dst` (`shape`'s element count).
    fn load_into(&self, name: &str, shape: &[usize], dst: &mut [f32]) -> Result<(), CheckpointError> {
        let v = self.load(name, shape)?;
        dst.copy_from_slice(&v);
        Ok(())
    }
}

impl WeightSource for Weights {
    fn contains(&self, name: &str) -> bool {
        Weights::contains(self, name)
    }

    fn load_into(&self, name: &str, shape: &[usize], dst: &mut [f32]) -> Result<(), CheckpointError> {
        self.tensor_into(name, shape, dst)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let a = self.tensor(name, shape)?;
        if a.is_standard_layout() {
            // the decoded buffer itself, without a second copy
            let (v, offset) = a.into_raw_vec_and_offset();
            if offset.unwrap_or(0) == 0 {
                return Ok(v);
            }
            return Ok(v[offset.unwrap_or(0)..].to_vec());
        }
        Ok(a.iter().copied().collect())
    }
}

/// Fills every parameter of `plan`. `overrides` replaces initial values of
/// adapter tensors by name (e.g. a LoRA A drawn elsewhere).
pub fn initialize(
    plan: &Plan,
    weights: &dyn WeightSource,
    overrides: &BTreeMap<String, Vec<f32>>,
) -> Result<Vec<Vec<f32>>, InitError> {
    let mut params: Vec<Vec<f32>> = vec![Vec::new(); plan.params.len()];
    // Stacked weights are allocated first, and the parts that live only in
    // their stack are loaded, decomposed and made residual in place there:
    // no second copy of those weights is made (on a VM, fresh pages cost
    // more start-up time than the arithmetic).
    let home = stack_homes(plan);
    let mut stacks: Vec<Vec<f32>> = home
        .stacks
        .iter()
        .map(|&i| vec![0.0; plan.params[i].numel() as usize])
        .collect();
    // Base weights (and the W that residuals start from), read side by side.
    let loaded: Vec<(usize, Vec<f32>)> = {
        let mut homed = home.slices(&mut stacks);
        let jobs: Vec<(usize, &str, Option<&mut [f32]>)> = plan
            .params
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match &p.role {
                ParamRole::Base { tensor } | ParamRole::Residual { tensor, .. } => Some((i, tensor.as_str())),
                ParamRole::Head { tensor, .. } if weights.contains(tensor) => Some((i, tensor.as_str())),
                _ => None,
            })
            .map(|(i, t)| (i, t, homed.remove(&i)))
            .collect();
        jobs.into_par_iter()
            .filter_map(|(i, tensor, dst)| match dst {
                None => Some(weights.load(tensor, &plan.params[i].shape).map(|v| (i, v))),
                Some(dst) => weights.load_into(tensor, &plan.params[i].shape, dst).err().map(Err),
            })
            .collect::<Result<_, _>>()?
    };
    for (i, v) in loaded {
        params[i] = v;
    }
    // A task head the checkpoint lacks starts as transformers' `_init_weights` does.
    for (i, p) in plan.params.iter().enumerate() {
        if let ParamRole::Head { init, .. } = p.role
            && params[i].is_empty()
        {
            let n: usize = p.shape.iter().product();
            params[i] = match init {
                HeadInit::Zeros => vec![0.0; n],
                HeadInit::Normal { std } => {
                    let seed = lamda_compiler::passes::adapter_init::tensor_seed(plan.train.seed, &p.name);
                    let mut rng = Xoshiro256StarStar::seed_from_u64(seed);
                    (0..n).map(|_| (std * rng.next_normal()) as f32).collect()
                }
            };
        }
    }
    // Every SVD the recipes need, side by side: one weight per rayon task,
    // each SVD sequential inside (faer's parallel SVD mostly waits on thread
    // wake-ups at these sizes); a lone weight gets the whole pool.
    let svd_par = if plan.init.iter().filter(|r| r.needs_svd).count() > 1 {
        Par::Seq
    } else {
        faer::get_global_parallelism()
    };
    let svds: Vec<Option<ThinSvd>> = plan
        .init
        .par_iter()
        .map(|recipe| {
            recipe_svd(
                plan,
                home.weight(&params, &stacks, plan.adapters[recipe.adapter].base),
                recipe,
                svd_par,
            )
        })
        .collect::<Result<_, _>>()?;
    crate::ops::vector_state::clear_upper_all();
    for (recipe, svd) in plan.init.iter().zip(svds) {
        let err = |name: &str| {
            let name = name.to_string();
            move |source: LinalgError| InitError::Linalg {
                name: name.clone(),
                source,
            }
        };
        for &(p, init, seed) in &recipe.tensors {
            let info = &plan.params[p];
            let (rows, cols) = match info.shape.as_slice() {
                [r, c] => (*r, *c),
                [k] => (*k, 1),
                other => {
                    return Err(InitError::Other {
                        name: info.name.clone(),
                        msg: format!("shape {other:?}"),
                    });
                }
            };
            let need_svd = || {
                svd.as_ref().ok_or_else(|| InitError::Other {
                    name: info.name.clone(),
                    msg: "no SVD computed".into(),
                })
            };
            let values: Vec<f32> = match init {
                Init::SvdRight => {
                    let s = need_svd()?;
                    (0..rows)
                        .flat_map(|c| (0..cols).map(move |j| (c, j)))
                        .map(|(c, j)| s.v[(j, c)] as f32)
                        .collect()
                }
                Init::SvdLeft => {
                    let s = need_svd()?;
                    (0..rows)
                        .flat_map(|i| (0..cols).map(move |c| (i, c)))
                        .map(|(i, c)| s.u[(i, c)] as f32)
                        .collect()
                }
                Init::SvdRightScaled => {
                    let s = need_svd()?;
                    (0..rows)
                        .flat_map(|c| (0..cols).map(move |j| (c, j)))
                        .map(|(c, j)| (s.s[c].sqrt() * s.v[(j, c)]) as f32)
                        .collect()
                }
                Init::SvdLeftScaled => {
                    let s = need_svd()?;
                    (0..rows)
                        .flat_map(|i| (0..cols).map(move |c| (i, c)))
                        .map(|(i, c)| (s.u[(i, c)] * s.s[c].sqrt()) as f32)
                        .collect()
                }
                Init::Identity => (0..rows * cols)
                    .map(|k| if k / cols == k % cols { 1.0 } else { 0.0 })
                    .collect(),
                Init::Zeros => vec![0.0; rows * cols],
                Init::KaimingUniform => {
                    let mut rng = Xoshiro256StarStar::seed_from_u64(seed);
                    kaiming_uniform(&mut rng, rows, cols)
                        .map_err(err(&info.name))?
                        .into_data()
                }
                Init::Normal { std } => {
                    let mut rng = Xoshiro256StarStar::seed_from_u64(seed);
                    (0..rows * cols).map(|_| (std * rng.next_normal()) as f32).collect()
                }
            };
            params[p] = match overrides.get(&info.name) {
                Some(v) if v.len() == values.len() => v.clone(),
                Some(v) => {
                    return Err(InitError::Other {
                        name: info.name.clone(),
                        msg: format!("override has {} values, expected {}", v.len(), values.len()),
                    });
                }
                None => values,
            };
        }
    }
    // Residual weights `W - sum coeff * path`, side by side, each written
    // over its own base weight: no second (d_out, d_in) buffer per weight,
    // whose fresh pages cost more start-up time than the arithmetic. A base
    // that another term reads (or two recipes share) is copied instead.
    let mut readers: BTreeMap<usize, usize> = BTreeMap::new();
    for recipe in &plan.init {
        if let Some(terms) = &recipe.residual {
            *readers.entry(plan.adapters[recipe.adapter].base).or_default() += 1;
            for f in terms.iter().flat_map(|t| &t.chain) {
                let (PathFactor::Matrix(q) | PathFactor::Diag(q)) = *f;
                *readers.entry(q).or_default() += 1;
            }
        }
    }
    // Each residual is written in place: over its slice of a stack, or over
    // the base weight taken out of `params` (copied when others read it).
    enum Dest<'a> {
        Home(&'a mut [f32]),
        Own(usize, Vec<f32>),
    }
    let mut homed = home.slices(&mut stacks);
    let jobs: Vec<(&InitRecipe, &[lamda_compiler::ir::PathTerm], Dest<'_>)> = plan
        .init
        .iter()
        .filter_map(|recipe| {
            let terms = recipe.residual.as_ref()?;
            let base = plan.adapters[recipe.adapter].base;
            let dest = match homed.remove(&base) {
                Some(slice) => Dest::Home(slice),
                None if readers.get(&base) == Some(&1) => Dest::Own(base, std::mem::take(&mut params[base])),
                None => Dest::Own(base, params[base].clone()),
            };
            Some((recipe, terms.as_slice(), dest))
        })
        .collect();
    let owned: Vec<Option<(usize, Vec<f32>)>> = jobs
        .into_par_iter()
        .map(|(recipe, terms, dest)| match dest {
            Dest::Home(w) => residual(plan, &params, recipe, terms, w).map(|()| None),
            Dest::Own(base, mut w) => residual(plan, &params, recipe, terms, &mut w).map(|()| Some((base, w))),
        })
        .collect::<Result<_, _>>()?;
    crate::ops::vector_state::clear_upper_all();
    for (base, w) in owned.into_iter().flatten() {
        params[base] = w;
    }
    // Stacks: the parts that do not live in them are copied in (after every residual is final).
    for (&i, mut stack) in home.stacks.iter().zip(stacks) {
        let ParamRole::Concat { parts } = &plan.params[i].role else {
            continue;
        };
        let mut off = 0;
        for &q in parts {
            let n = plan.params[q].numel() as usize;
            if home.of(q).is_none() {
                if params[q].len() != n {
                    return Err(InitError::Other {
                        name: plan.params[q].name.clone(),
                        msg: format!("{} values for shape {:?}", params[q].len(), plan.params[q].shape),
                    });
                }
                stack[off..off + n].copy_from_slice(&params[q]);
            }
            off += n;
        }
        params[i] = stack;
    }
    // Constant tables, then every parameter's size (homed parts live in their stack).
    for (i, p) in plan.params.iter().enumerate() {
        if let ParamRole::Table(t) = &p.role {
            let (seq, hd, theta, cos) = match *t {
                TableKind::RopeCos { seq, head_dim, theta } => (seq, head_dim, theta, true),
                TableKind::RopeSin { seq, head_dim, theta } => (seq, head_dim, theta, false),
            };
            let table = crate::ops::RopeTable::new(seq, hd, theta).map_err(|e| InitError::Other {
                name: p.name.clone(),
                msg: e.to_string(),
            })?;
            params[i] = if cos {
                table.cos().to_vec()
            } else {
                table.sin().to_vec()
            };
        }
        let want: usize = p.shape.iter().product();
        if params[i].len() != want && home.of(i).is_none() {
            return Err(InitError::Other {
                name: p.name.clone(),
                msg: format!("{} values for shape {:?}", params[i].len(), p.shape),
            });
        }
    }
    // Base weights that only live inside a stack are dropped: the stack is their only copy.
    let used = referenced_params(plan);
    for (i, p) in plan.params.iter().enumerate() {
        if matches!(p.role, ParamRole::Base { .. } | ParamRole::Residual { .. }) && !used.contains(&i) {
            params[i] = Vec::new();
        }
    }
    Ok(params)
}

/// Parameters some program of the plan reads (directly or through a slice).
pub fn referenced_params(plan: &Plan) -> std::collections::BTreeSet<usize> {
    use lamda_compiler::ir::Op;
    plan.phases
        .iter()
        .map(|p| &p.program)
        .chain(std::iter::once(&plan.eval))
        .flat_map(|prog| prog.instrs.iter())
        .filter_map(|ins| match ins.op {
            Op::Param(p) | Op::ParamSlice { param: p, .. } => Some(p),
            _ => None,
        })
        .collect()
}

/// Where the stacked parts that live only in their stack are: a part is
/// homed when no program reads it, exactly one stack holds it, no residual
/// term reads it, and at most one recipe writes it (in place).
struct Homes {
    /// the Concat parameters, in plan order
    stacks: Vec<usize>,
    /// part -> (index into `stacks`, offset, length)
    at: BTreeMap<usize, (usize, usize, usize)>,
}

impl Homes {
    fn of(&self, p: usize) -> Option<(usize, usize, usize)> {
        self.at.get(&p).copied()
    }

    /// Parameter `p`'s values: its own buffer, or its slice of a stack.
    fn weight<'a>(&self, params: &'a [Vec<f32>], stacks: &'a [Vec<f32>], p: usize) -> &'a [f32] {
        match self.of(p) {
            Some((s, off, n)) => &stacks[s][off..off + n],
            None => &params[p],
        }
    }

    /// Every homed part's slice, mutable and disjoint.
    fn slices<'a>(&self, stacks: &'a mut [Vec<f32>]) -> BTreeMap<usize, &'a mut [f32]> {
        let mut by_stack: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new(); stacks.len()];
        for (&p, &(s, off, n)) in &self.at {
            by_stack[s].push((off, n, p));
        }
        let mut out = BTreeMap::new();
        for (stack, mut parts) in stacks.iter_mut().zip(by_stack) {
            parts.sort_unstable();
            let mut rest: &'a mut [f32] = stack.as_mut_slice();
            let mut pos = 0;
            for (off, n, p) in parts {
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(off - pos);
                let (part, tail) = tail.split_at_mut(n);
                out.insert(p, part);
                rest = tail;
                pos = off + n;
            }
        }
        out
    }
}

fn stack_homes(plan: &Plan) -> Homes {
    let used = referenced_params(plan);
    let mut in_stacks: BTreeMap<usize, usize> = BTreeMap::new();
    let mut read_by_terms = std::collections::BTreeSet::new();
    for recipe in &plan.init {
        for f in recipe.residual.iter().flatten().flat_map(|t| &t.chain) {
            let (PathFactor::Matrix(q) | PathFactor::Diag(q)) = *f;
            read_by_terms.insert(q);
        }
    }
    let mut bases: BTreeMap<usize, usize> = BTreeMap::new();
    for recipe in plan.init.iter().filter(|r| r.residual.is_some()) {
        *bases.entry(plan.adapters[recipe.adapter].base).or_default() += 1;
    }
    let mut stacks = Vec::new();
    for (i, p) in plan.params.iter().enumerate() {
        if let ParamRole::Concat { parts } = &p.role {
            stacks.push(i);
            for &q in parts {
                *in_stacks.entry(q).or_default() += 1;
            }
        }
    }
    let mut at = BTreeMap::new();
    for (s, &i) in stacks.iter().enumerate() {
        let ParamRole::Concat { parts } = &plan.params[i].role else {
            continue;
        };
        let mut off = 0;
        for &q in parts {
            let n = plan.params[q].numel() as usize;
            let homeable = matches!(plan.params[q].role, ParamRole::Base { .. } | ParamRole::Residual { .. })
                && !used.contains(&q)
                && in_stacks.get(&q) == Some(&1)
                && !read_by_terms.contains(&q)
                && bases.get(&q).is_none_or(|&n| n <= 1);
            if homeable {
                at.insert(q, (s, off, n));
            }
            off += n;
        }
    }
    Homes { stacks, at }
}

/// `F_1 F_2 ... F_k` in float64 (diag factors as diagonal matrices), multiplied right to left.
fn chain_product(plan: &Plan, params: &[Vec<f32>], chain: &[PathFactor]) -> Result<Mat<f64>, String> {
    let mut acc: Option<Mat<f64>> = None;
    for f in chain.iter().rev() {
        acc = Some(match (*f, acc) {
            (PathFactor::Matrix(p), prev) => {
                let (r, c) = match plan.params[p].shape.as_slice() {
                    [r, c] => (*r, *c),
                    other => return Err(format!("`{}` is not a matrix: {other:?}", plan.params[p].name)),
                };
                let m = Mat::from_fn(r, c, |i, j| f64::from(params[p][i * c + j]));
                match prev {
                    None => m,
                    Some(prev) => {
                        if prev.nrows() != c {
                            return Err(format!(
                                "cannot multiply {r} x {c} by {} x {}",
                                prev.nrows(),
                                prev.ncols()
                            ));
                        }
                        &m * &prev
                    }
                }
            }
            (PathFactor::Diag(p), None) => {
                let v = &params[p];
                Mat::from_fn(v.len(), v.len(), |i, j| if i == j { f64::from(v[i]) } else { 0.0 })
            }
            (PathFactor::Diag(p), Some(mut prev)) => {
                let v = &params[p];
                if prev.nrows() != v.len() {
                    return Err(format!("diag of {} by {} rows", v.len(), prev.nrows()));
                }
                for i in 0..prev.nrows() {
                    for j in 0..prev.ncols() {
                        prev[(i, j)] *= f64::from(v[i]);
                    }
                }
                prev
            }
        });
    }
    acc.ok_or_else(|| "an empty path term".to_string())
}

/// `W_res = W - sum_t coeff_t path_t` of `recipe` in float64, rounded once to
/// float32, written over `w` (the base weight W, `(d_out, d_in)`, which no
/// term reads). By blocks of rows, each read whole before it is written: a term
/// `F_1 (F_2 ... F_k)` whose first factor is a matrix multiplies the block's
/// rows of `F_1` by the small right-hand product, so no `(d_out, d_in)`
/// float64 temporary is made (start-up time went to faulting them in).
fn residual(
    plan: &Plan,
    params: &[Vec<f32>],
    recipe: &InitRecipe,
    terms: &[lamda_compiler::ir::PathTerm],
    w: &mut [f32],
) -> Result<(), InitError> {
    /// Rows per block.
    const RB: usize = 64;
    enum Prepared {
        /// coeff, the first factor's parameter, the product of the others `(k, d_in)`.
        Split(f64, usize, Mat<f64>),
        /// coeff, the whole product `(d_out, d_in)`.
        Whole(f64, Mat<f64>),
    }
    let a = &plan.adapters[recipe.adapter];
    let (d_out, d_in) = (a.d_out, a.d_in);
    let fail = |msg: String| InitError::Other {
        name: recipe.weight.clone(),
        msg,
    };
    let mut prepared = Vec::with_capacity(terms.len());
    for term in terms {
        let p = match term.chain.split_first() {
            Some((PathFactor::Matrix(p), rest)) if !rest.is_empty() => {
                let right = chain_product(plan, params, rest).map_err(fail)?;
                let k = right.nrows();
                if right.ncols() != d_in || params[*p].len() != d_out * k {
                    return Err(fail(format!(
                        "path product is {d_out} x {k} by {} x {}, the weight {d_out} x {d_in}",
                        right.nrows(),
                        right.ncols()
                    )));
                }
                Prepared::Split(term.coeff, *p, right)
            }
            _ => {
                let m = chain_product(plan, params, &term.chain).map_err(fail)?;
                if m.nrows() != d_out || m.ncols() != d_in {
                    return Err(fail(format!(
                        "path product is {} x {}, the weight {d_out} x {d_in}",
                        m.nrows(),
                        m.ncols()
                    )));
                }
                Prepared::Whole(term.coeff, m)
            }
        };
        prepared.push(p);
    }
    if w.len() != d_out * d_in {
        return Err(fail(format!("{} values for a {d_out} x {d_in} weight", w.len())));
    }
    let mut acc = vec![0.0f64; RB * d_in];
    // the block's product, transposed: column i is row i, contiguous
    let mut blk_t = Mat::<f64>::zeros(d_in, RB);
    for r0 in (0..d_out).step_by(RB) {
        let rows = RB.min(d_out - r0);
        let acc = &mut acc[..rows * d_in];
        for (x, &v) in acc.iter_mut().zip(&w[r0 * d_in..(r0 + rows) * d_in]) {
            *x = f64::from(v);
        }
        for term in &prepared {
            match term {
                Prepared::Split(coeff, p, right) => {
                    let k = right.nrows();
                    let f1_t = Mat::<f64>::from_fn(k, rows, |j, i| f64::from(params[*p][(r0 + i) * k + j]));
                    let dst = blk_t.as_mut().subcols_mut(0, rows);
                    matmul(
                        dst,
                        Accum::Replace,
                        right.as_ref().transpose(),
                        f1_t.as_ref(),
                        1.0,
                        Par::Seq,
                    );
                    for (i, row) in acc.chunks_exact_mut(d_in.max(1)).enumerate() {
                        let col = blk_t.col(i);
                        for (x, &v) in row.iter_mut().zip(col.iter()) {
                            *x -= coeff * v;
                        }
                    }
                }
                Prepared::Whole(coeff, m) => {
                    for (i, row) in acc.chunks_exact_mut(d_in.max(1)).enumerate() {
                        for (j, x) in row.iter_mut().enumerate() {
                            *x -= coeff * m[(r0 + i, j)];
                        }
                    }
                }
            }
        }
        for (o, &x) in w[r0 * d_in..(r0 + rows) * d_in].iter_mut().zip(acc.iter()) {
            *o = x as f32;
        }
    }
    Ok(())
}

/// The top singular triplets `recipe` reads (`None` when it needs none):
/// as many as its largest SVD-initialised tensor has rows (A) or columns (B).
fn recipe_svd(plan: &Plan, weight: &[f32], recipe: &InitRecipe, par: Par) -> Result<Option<ThinSvd>, InitError> {
    if !recipe.needs_svd {
        return Ok(None);
    }
    let a = &plan.adapters[recipe.adapter];
    let err = |source: LinalgError| InitError::Linalg {
        name: recipe.weight.clone(),
        source,
    };
    let needed = recipe
        .tensors
        .iter()
        .filter_map(|&(p, init, _)| match (init, plan.params[p].shape.as_slice()) {
            (Init::SvdRight | Init::SvdRightScaled, [r, _]) => Some(*r),
            (Init::SvdLeft | Init::SvdLeftScaled, [_, r]) => Some(*r),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let w = MatF32Ref::new("weight", weight, a.d_out, a.d_in).map_err(err)?;
    let svd = top_svd_with(w, needed, EXACT_SVD_MAX_DIM, par).map_err(err)?;
    if svd.k() < needed {
        return Err(InitError::Other {
            name: recipe.weight.clone(),
            msg: format!("{needed} singular vectors needed, the weight has {}", svd.k()),
        });
    }
    // Keep only the triplets read: the SVDs of all weights are held at once.
    let r = needed;
    Ok(Some(ThinSvd {
        u: svd.u.as_ref().get(.., ..r).to_owned(),
        s: svd.s[..r].to_vec(),
        v: svd.v.as_ref().get(.., ..r).to_owned(),
    }))
}
