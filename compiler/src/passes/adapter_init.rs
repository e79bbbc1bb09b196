//! Adapter initialisation recipes: how the runtime fills every adapter tensor and residual weight.
//!
//! Expects the IR's parameter table and adapters. Guarantees, per adapted
//! module: the initialiser of each adapter tensor (SVD-based ones follow
//! SEMANTICS §2: float64 SVD of the float32 weight, the sign rule, rounding
//! to float32); whether the module needs the SVD of its weight; for a
//! residual base, the terms of `W_res = W - sum_terms coeff * F_1 ... F_k`
//! evaluated in float64 from the float32 tensors at their initial values and
//! rounded once (SEMANTICS §3); and a seed for random initialisers derived
//! from the run's seed and the tensor's name, so results do not depend on
//! which other modules are adapted. It checks that SVD-based initialisers ask
//! for at most `min(d_in, d_out)` singular vectors. It does not compute
//! anything numeric: that needs the weights, which only the runtime reads.

use crate::adapter::Init;
use crate::ir::{Ir, ParamId, ParamRole, PathTerm};

/// How to initialise one adapted module.
#[derive(Debug, Clone, PartialEq)]
pub struct InitRecipe {
    /// Index into the IR's adapters.
    pub adapter: usize,
    /// The checkpoint tensor of the base weight.
    pub weight: String,
    /// Whether some initialiser needs the SVD of the weight.
    pub needs_svd: bool,
    /// Every adapter tensor with its initialiser and seed.
    pub tensors: Vec<(ParamId, Init, u64)>,
    /// `Some(terms)`: the base weight becomes `W - path(init)`.
    pub residual: Option<Vec<PathTerm>>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("adapter init: {0}")]
pub struct InitError(pub String);

/// A stable 64-bit hash (FNV-1a) of a name, mixed with the run seed.
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The recipes of every adapted module, in model order.
pub fn init_recipes(ir: &Ir, seed: u64) -> Result<Vec<InitRecipe>, InitError> {
    let mut out = Vec::new();
    for (ai, a) in ir.adapters.iter().enumerate() {
        let mut tensors = Vec::new();
        let mut needs_svd = false;
        for &p in &a.tensors {
            let info = &ir.params[p];
            let ParamRole::Adapter { init, .. } = info.role else {
                return Err(InitError(format!("`{}` is not an adapter tensor", info.name)));
            };
            if init.needs_svd() {
                needs_svd = true;
                let k = info.shape.iter().copied().min().unwrap_or(0);
                if k > a.d_in.min(a.d_out) {
                    return Err(InitError(format!(
                        "`{}` needs {k} singular vectors of a {} x {} weight",
                        info.name, a.d_out, a.d_in
                    )));
                }
            }
            tensors.push((p, init, tensor_seed(seed, &info.name)));
        }
        let weight = match &ir.params[a.base].role {
            ParamRole::Base { tensor } | ParamRole::Residual { tensor, .. } => tensor.clone(),
            ParamRole::Adapter { .. } | ParamRole::Head { .. } | ParamRole::Concat { .. } | ParamRole::Table(_) => {
                return Err(InitError(format!("adapter {} has no base weight", a.hf_name)));
            }
        };
        out.push(InitRecipe {
            adapter: ai,
            weight,
            needs_svd,
            tensors,
            residual: a.residual.then(|| a.terms.clone()),
        });
    }
    Ok(out)
}
