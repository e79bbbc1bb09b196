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
use lamda_compiler::ir::{ParamRole, PathFactor, TableKind};
use lamda_compiler::passes::adapter_init::InitRecipe;
use lamda_compiler::plan::Plan;
use rayon::prelude::*;

use crate::checkpoint::{CheckpointError, Weights};
use crate::linalg::svd::top_svd_with;
use crate::linalg::{EXACT_SVD_MAX_DIM, LinalgError, MatF32Ref, ThinSvd, Xoshiro256StarStar, init::kaiming_uniform};
use faer::{Mat, Par};

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
pub trait WeightSource {
    /// The tensor `name` as float32, checked against `shape`.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError>;
}

impl WeightSource for Weights {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let a = self.tensor(name, shape)?;
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
    // Base weights (and the W that residuals start from).
    for (i, p) in plan.params.iter().enumerate() {
        match &p.role {
            ParamRole::Base { tensor } | ParamRole::Residual { tensor, .. } => {
                params[i] = weights.load(tensor, &p.shape)?;
            }
            ParamRole::Adapter { .. } | ParamRole::Concat { .. } | ParamRole::Table(_) => {}
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
        .map(|recipe| recipe_svd(plan, &params, recipe, svd_par))
        .collect::<Result<_, _>>()?;
    crate::ops::vector_state::clear_upper_all();
    for (recipe, svd) in plan.init.iter().zip(svds) {
        let a = &plan.adapters[recipe.adapter];
        let (d_out, d_in) = (a.d_out, a.d_in);
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
        if let Some(terms) = &recipe.residual {
            let mut w = Mat::from_fn(d_out, d_in, |i, j| f64::from(params[a.base][i * d_in + j]));
            for term in terms {
                let m = chain_product(plan, &params, &term.chain).map_err(|msg| InitError::Other {
                    name: recipe.weight.clone(),
                    msg,
                })?;
                if m.nrows() != d_out || m.ncols() != d_in {
                    return Err(InitError::Other {
                        name: recipe.weight.clone(),
                        msg: format!(
                            "path product is {} x {}, the weight {d_out} x {d_in}",
                            m.nrows(),
                            m.ncols()
                        ),
                    });
                }
                w -= faer::Scale(term.coeff) * &m;
            }
            params[a.base] = (0..d_out * d_in).map(|k| w[(k / d_in, k % d_in)] as f32).collect();
        }
    }
    // Derived parameters: stacked weights and constant tables (after every residual is final).
    // A base weight that only lives inside stacks is dropped right after its
    // last stack is built, so the parts and their stacks never all exist at
    // once (start-up peak memory).
    let used = referenced_params(plan);
    let mut last_stack: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, p) in plan.params.iter().enumerate() {
        if let ParamRole::Concat { parts } = &p.role {
            for &q in parts {
                last_stack.insert(q, i);
            }
        }
    }
    for (i, p) in plan.params.iter().enumerate() {
        match &p.role {
            ParamRole::Concat { parts } => {
                params[i] = parts.iter().flat_map(|&q| params[q].iter().copied()).collect();
                for &q in parts {
                    let droppable = matches!(plan.params[q].role, ParamRole::Base { .. } | ParamRole::Residual { .. });
                    if q < i && droppable && !used.contains(&q) && last_stack.get(&q) == Some(&i) {
                        params[q] = Vec::new();
                    }
                }
            }
            ParamRole::Table(t) => {
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
            _ => {}
        }
        let want: usize = p.shape.iter().product();
        let dropped = params[i].is_empty() && last_stack.get(&i).is_some_and(|&st| st > i) && !used.contains(&i);
        if params[i].len() != want && !dropped {
            return Err(InitError::Other {
                name: p.name.clone(),
                msg: format!("{} values for shape {:?}", params[i].len(), p.shape),
            });
        }
    }
    // Base weights that only live inside a stack are dropped: the stack is their only copy.
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

/// The top singular triplets `recipe` reads (`None` when it needs none):
/// as many as its largest SVD-initialised tensor has rows (A) or columns (B).
fn recipe_svd(plan: &Plan, params: &[Vec<f32>], recipe: &InitRecipe, par: Par) -> Result<Option<ThinSvd>, InitError> {
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
    let w = MatF32Ref::new("weight", &params[a.base], a.d_out, a.d_in).map_err(err)?;
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
