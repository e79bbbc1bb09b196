//! LaMDA++ rank allocation: `rank auto(budget = P)` (SEMANTICS §8).
//!
//! Expects: the N modules one `rank auto` clause adapts, in model order, each
//! with its energy score `E_l` (float64, in `[0, 1]`, computed by the runtime
//! from the weight for the uniform rank `r0` that [`uniform_rank`] returns)
//! and its shape, plus the rank budget P and the optional spec overrides
//! `r_min` (replaces 1) and `r_max` (replaces the `4 r0` term of
//! `r_max_l = min(d_in, d_out, 4 r0)`).
//!
//! Guarantees: [`allocate`] follows steps 1 and 3 to 6 of SEMANTICS §8
//! literally and returns every intermediate value next to the ranks, so a
//! caller (or a test against the PyTorch reference) can see why a module got
//! its rank. On success `sum r_l <= P`, with equality unless every module
//! sits at its `r_max_l`; a module with a lower energy never ends with a lower
//! rank unless it sits at its `r_max_l`. Ties between energies are exact float
//! comparisons: step 5 decrements the later module, step 6 increments the
//! earlier one. The result is a deterministic function of the inputs.
//!
//! Does not: compute energies (that needs the weights; the runtime does it,
//! `lamda_runtime::linalg::spectrum::energy`), resolve module names, or
//! attach spans to its errors: it is a pure function over numbers, and the
//! front end, which owns the spans, reports budget problems it can already
//! see from the spec (`lamda::rank::infeasible_budget`,
//! `lamda::rank::bad_bounds`). An `r_min` above some module's
//! `min(d_in, d_out)` is not an error here: step 4's clamp,
//! `min(max(x, r_min), r_max_l)`, then gives that module `r_max_l`, exactly
//! as SEMANTICS §1 defines `clamp`.

/// One adapted module as the allocation sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllocModule {
    /// Energy score `E_l = sum_{i<r0} s_i^2 / ||W_l||_F^2`, in `[0, 1]`.
    pub energy: f64,
    /// Input features of `W_l: (d_out, d_in)`.
    pub d_in: u64,
    /// Output features of `W_l: (d_out, d_in)`.
    pub d_out: u64,
}

/// The clause's rank budget and its optional bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocBudget {
    /// P: the allocated ranks satisfy `sum_l r_l <= P`.
    pub budget: u64,
    /// Spec `min`: replaces `r_min = 1`.
    pub r_min: Option<u64>,
    /// Spec `max`: replaces the `4 r0` term of `r_max_l`.
    pub r_max: Option<u64>,
}

/// The ranks and every intermediate value of SEMANTICS §8. Vectors are
/// indexed by module, in the order of the input: (N,).
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Step 1: the uniform rank `floor(P / N)`.
    pub r0: u64,
    /// Step 3: `w_l = 1 - E_l`.
    pub w: Vec<f64>,
    /// Step 3: `mean(w) = sum_l w_l / N`.
    pub mean_w: f64,
    /// Step 3: `r*_l = r0 w_l / mean(w)`, or `r0` when every `w_l` is 0.
    pub r_star: Vec<f64>,
    /// Step 4: the lower bound (1, or the spec's `min`).
    pub r_min: u64,
    /// Step 4: `r_max_l = min(d_in, d_out, 4 r0)` (spec `max` replaces `4 r0`).
    pub r_max: Vec<u64>,
    /// Step 4: `clamp(round_half_up(r*_l), r_min, r_max_l)`.
    pub r_round: Vec<u64>,
    /// Ranks after the step-5 decrement loop.
    pub r_dec: Vec<u64>,
    /// Final ranks, after the step-6 increment loop.
    pub ranks: Vec<u64>,
    /// Module index of every step-5 decrement, in order.
    pub decrements: Vec<usize>,
    /// Module index of every step-6 increment, in order.
    pub increments: Vec<usize>,
}

impl Allocation {
    /// `sum_l r_l` of the final ranks (at most P).
    pub fn sum_r(&self) -> u64 {
        self.ranks.iter().sum()
    }
}

/// Why a budget cannot be allocated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocError {
    /// The clause adapts no module.
    #[error("rank auto: the clause adapts no module")]
    NoModules,
    /// Step 1: `P < N`, so `r0 = floor(P / N) = 0`.
    #[error(
        "rank budget {budget} < {modules} modules: r0 = floor({budget}/{modules}) = 0 (every module needs rank >= 1)"
    )]
    BudgetBelowModuleCount {
        /// P.
        budget: u64,
        /// N.
        modules: usize,
    },
    /// Step 5: the ranks still exceed P, and every module is at `r_min`.
    #[error(
        "rank budget {budget} is infeasible with r_min = {r_min}: every module is at r_min and the ranks still sum to {sum}"
    )]
    BudgetBelowRMin {
        /// P.
        budget: u64,
        /// The lower bound in force.
        r_min: u64,
        /// `sum r_l` when no module could be decremented any more.
        sum: u64,
    },
    /// A spec bound of 0 (every module needs rank >= 1).
    #[error("rank auto: {bound} = 0, but every module needs rank >= 1")]
    ZeroBound {
        /// `"r_min"` or `"r_max"`.
        bound: &'static str,
    },
    /// The spec's `min` exceeds its `max`.
    #[error("rank auto: r_min = {r_min} exceeds r_max = {r_max}")]
    RMinAboveRMax {
        /// Spec `min`.
        r_min: u64,
        /// Spec `max`.
        r_max: u64,
    },
    /// An energy that is NaN or outside `[0, 1]`.
    #[error("module {module}: energy score {energy} is not in [0, 1]")]
    InvalidEnergy {
        /// Index of the module.
        module: usize,
        /// Its energy.
        energy: f64,
    },
    /// A module with no rows or no columns.
    #[error("module {module}: empty weight ({d_out} x {d_in})")]
    EmptyModule {
        /// Index of the module.
        module: usize,
        /// Its output features.
        d_out: u64,
        /// Its input features.
        d_in: u64,
    },
}

/// Step 1: the uniform rank `r0 = floor(P / N)`; an error when `P < N`.
///
/// The runtime needs r0 before [`allocate`]: the energies depend on it.
pub fn uniform_rank(budget: u64, modules: usize) -> Result<u64, AllocError> {
    if modules == 0 {
        return Err(AllocError::NoModules);
    }
    let r0 = budget / modules as u64;
    if r0 < 1 {
        return Err(AllocError::BudgetBelowModuleCount { budget, modules });
    }
    Ok(r0)
}

/// The LaMDA++ allocation of SEMANTICS §8 for one `rank auto` clause.
///
/// modules: (N,), in model order; each energy must be the one for the r0 of
/// [`uniform_rank`]`(budget.budget, N)`.
pub fn allocate(modules: &[AllocModule], budget: AllocBudget) -> Result<Allocation, AllocError> {
    // step 1
    let n = modules.len();
    let p = budget.budget;
    let r0 = uniform_rank(p, n)?;
    let r_min = budget.r_min.unwrap_or(1);
    check_bounds(budget)?;
    for (l, m) in modules.iter().enumerate() {
        if m.d_in == 0 || m.d_out == 0 {
            return Err(AllocError::EmptyModule {
                module: l,
                d_out: m.d_out,
                d_in: m.d_in,
            });
        }
        if !(0.0..=1.0).contains(&m.energy) {
            return Err(AllocError::InvalidEnergy {
                module: l,
                energy: m.energy,
            });
        }
    }

    // step 3 (step 2, the energies, is the caller's)
    let w: Vec<f64> = modules.iter().map(|m| 1.0 - m.energy).collect();
    let mean_w = w.iter().sum::<f64>() / n as f64;
    let r_star: Vec<f64> = if w.iter().all(|&x| x == 0.0) {
        vec![r0 as f64; n]
    } else {
        w.iter().map(|&wl| r0 as f64 * wl / mean_w).collect()
    };

    // step 4
    let r_max_term = budget.r_max.unwrap_or_else(|| r0.saturating_mul(4));
    let r_max: Vec<u64> = modules.iter().map(|m| m.d_in.min(m.d_out).min(r_max_term)).collect();
    let r_round: Vec<u64> = r_star
        .iter()
        .zip(&r_max)
        .map(|(&rs, &hi)| {
            // round_half_up(x) = floor(x + 0.5), then clamp(x, lo, hi) = min(max(x, lo), hi),
            // all in float64; the result is an integer in [0, hi], so the cast is exact
            let rounded = (rs + 0.5).floor();
            rounded.max(r_min as f64).min(hi as f64) as u64
        })
        .collect();

    // step 5: while sum > P, decrement the highest energy above r_min (ties: later module)
    let mut ranks = r_round.clone();
    let mut sum: u64 = ranks.iter().sum();
    let mut decrements = Vec::new();
    while sum > p {
        let mut pick: Option<usize> = None;
        for l in 0..n {
            if ranks[l] > r_min && pick.is_none_or(|b| modules[l].energy >= modules[b].energy) {
                pick = Some(l);
            }
        }
        let Some(l) = pick else {
            return Err(AllocError::BudgetBelowRMin { budget: p, r_min, sum });
        };
        ranks[l] -= 1;
        sum -= 1;
        decrements.push(l);
    }
    let r_dec = ranks.clone();

    // step 6: while sum < P, increment the lowest energy below r_max_l (ties: earlier module)
    let mut increments = Vec::new();
    while sum < p {
        let mut pick: Option<usize> = None;
        for l in 0..n {
            if ranks[l] < r_max[l] && pick.is_none_or(|b| modules[l].energy < modules[b].energy) {
                pick = Some(l);
            }
        }
        let Some(l) = pick else {
            break; // every module at r_max_l: the budget is not used up
        };
        ranks[l] += 1;
        sum += 1;
        increments.push(l);
    }

    Ok(Allocation {
        r0,
        w,
        mean_w,
        r_star,
        r_min,
        r_max,
        r_round,
        r_dec,
        ranks,
        decrements,
        increments,
    })
}

/// Rejects spec bounds that no module can satisfy.
fn check_bounds(budget: AllocBudget) -> Result<(), AllocError> {
    if budget.r_min == Some(0) {
        return Err(AllocError::ZeroBound { bound: "r_min" });
    }
    if budget.r_max == Some(0) {
        return Err(AllocError::ZeroBound { bound: "r_max" });
    }
    if let (Some(r_min), Some(r_max)) = (budget.r_min, budget.r_max)
        && r_min > r_max
    {
        return Err(AllocError::RMinAboveRMax { r_min, r_max });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn modules(energies: &[f64], dim: u64) -> Vec<AllocModule> {
        energies
            .iter()
            .map(|&energy| AllocModule {
                energy,
                d_in: dim,
                d_out: dim,
            })
            .collect()
    }

    fn plain(budget: u64) -> AllocBudget {
        AllocBudget {
            budget,
            r_min: None,
            r_max: None,
        }
    }

    #[test]
    fn uniform_budget_with_equal_energies_gives_r0_everywhere() {
        let a = allocate(&modules(&[0.3; 4], 64), plain(32)).unwrap();
        assert_eq!(a.r0, 8);
        assert_eq!(a.w, vec![0.7; 4]);
        assert_eq!(a.r_star, vec![8.0; 4]);
        assert_eq!(a.ranks, vec![8; 4]);
        assert!(a.decrements.is_empty() && a.increments.is_empty());
    }

    #[test]
    fn step5_tie_decrements_the_later_module() {
        // r0 = 2, w = [0.9, 0.1, 0.1, 0.9] (mean 0.5): r* = [3.6, 0.4, 0.4, 3.6]
        // -> [4, 1, 1, 4], sum 10 > P = 9. Modules 1 and 2 have the highest
        // energy but sit at r_min; the candidates 0 and 3 tie at E = 0.1.
        let a = allocate(&modules(&[0.1, 0.9, 0.9, 0.1], 64), plain(9)).unwrap();
        assert_eq!(a.r_round, vec![4, 1, 1, 4]);
        assert_eq!(a.decrements, vec![3]);
        assert_eq!(a.ranks, vec![4, 1, 1, 3]);
    }

    #[test]
    fn step5_keeps_picking_the_highest_energy_candidate_until_r_min() {
        // r0 = 2: r* = [3.55, 0.04, 2.75, 0.31, 2.68, 2.68] -> [4, 1, 3, 1, 3, 3],
        // sum 15 > P = 12. Candidates (rank > 1): 0 (E 0.07), 2 (0.28), 4 and 5
        // (0.3, tied): 5 goes first, down to r_min, then 4.
        let e = [0.07, 0.99, 0.28, 0.92, 0.3, 0.3];
        let a = allocate(&modules(&e, 64), plain(12)).unwrap();
        assert_eq!(a.r0, 2);
        assert_eq!(a.r_round, vec![4, 1, 3, 1, 3, 3]);
        assert_eq!(a.decrements, vec![5, 5, 4]);
        assert_eq!(a.r_dec, vec![4, 1, 3, 1, 2, 1]);
        assert_eq!(a.ranks, a.r_dec);
        assert!(a.increments.is_empty());

        // r0 = 1, w = [0.8, 0.8, 0.3, 0.1] (mean 0.5): r* = [1.6, 1.6, 0.6, 0.2]
        // -> [2, 2, 1, 1], sum 6 > P = 4: 0 and 1 tie, 1 goes first, then 0.
        let a = allocate(&modules(&[0.2, 0.2, 0.7, 0.9], 64), plain(4)).unwrap();
        assert_eq!(a.r_round, vec![2, 2, 1, 1]);
        assert_eq!(a.decrements, vec![1, 0]);
        assert_eq!(a.ranks, vec![1, 1, 1, 1]);
    }

    #[test]
    fn step6_increments_the_lowest_energy_ties_to_the_earlier_module() {
        // r0 = 2, w = [0.9, 0.5, 0.1] (mean 0.5): r* = [3.6, 2, 0.4] -> [4, 2, 1],
        // sum 7 < P = 8: the lowest energy, module 0, grows.
        let a = allocate(&modules(&[0.1, 0.5, 0.9], 64), plain(8)).unwrap();
        assert_eq!(a.r_round, vec![4, 2, 1]);
        assert_eq!(a.increments, vec![0]);
        assert_eq!(a.ranks, vec![5, 2, 1]);

        // r0 = 4, w = [0.55, 0.55, 0.55, 0.35] (mean 0.5): r* = [4.4, 4.4, 4.4, 2.8]
        // -> [4, 4, 4, 3], sum 15 < P = 16: 0, 1, 2 tie, the earliest grows.
        let a = allocate(&modules(&[0.45, 0.45, 0.45, 0.65], 64), plain(16)).unwrap();
        assert_eq!(a.r_round, vec![4, 4, 4, 3]);
        assert_eq!(a.increments, vec![0]);
        assert_eq!(a.ranks, vec![5, 4, 4, 3]);

        // r0 = 1, all energies equal: r* = 1 everywhere, sum 5 < P = 9. Module 0
        // grows to r_max = 4 r0 = 4, then module 1 takes the last one.
        let a = allocate(&modules(&[0.5; 5], 64), plain(9)).unwrap();
        assert_eq!(a.r_max, vec![4; 5]);
        assert_eq!(a.increments, vec![0, 0, 0, 1]);
        assert_eq!(a.ranks, vec![4, 2, 1, 1, 1]);
    }

    #[test]
    fn r_max_binds_by_4r0_by_dims_and_by_the_spec() {
        // 4 r0 binds: r0 = 2, w = [1, 0, 0, 0, 0] (mean 0.2): r* = [10, 0, 0, 0, 0]
        // -> [8, 1, 1, 1, 1], sum 12 > P = 10: only module 0 can give.
        let a = allocate(&modules(&[0.0, 1.0, 1.0, 1.0, 1.0], 64), plain(10)).unwrap();
        assert_eq!(a.r_max, vec![8; 5]);
        assert_eq!(a.r_round, vec![8, 1, 1, 1, 1]);
        assert_eq!(a.decrements, vec![0, 0]);
        assert_eq!(a.ranks, vec![6, 1, 1, 1, 1]);

        // min(d_in, d_out) binds: module 0 is 64 x 3. r0 = 2, r* = [6, 0, 0]
        // -> [3, 1, 1], sum 5 < P = 6; module 0 is full, 1 and 2 tie at E = 1.
        let mut m = modules(&[0.0, 1.0, 1.0], 64);
        m[0].d_in = 3;
        let a = allocate(&m, plain(6)).unwrap();
        assert_eq!(a.r_max, vec![3, 8, 8]);
        assert_eq!(a.r_round, vec![3, 1, 1]);
        assert_eq!(a.increments, vec![1]);
        assert_eq!(a.ranks, vec![3, 2, 1]);

        // the spec's max replaces 4 r0 = 40: r0 = 10, r* = [30, 0, 0] -> [12, 1, 1]
        let spec = AllocBudget {
            budget: 30,
            r_min: None,
            r_max: Some(12),
        };
        let a = allocate(&modules(&[0.0, 1.0, 1.0], 64), spec).unwrap();
        assert_eq!(a.r_max, vec![12, 12, 12]);
        assert_eq!(a.r_round, vec![12, 1, 1]);
        assert_eq!(a.increments, [vec![1; 11], vec![2; 5]].concat());
        assert_eq!(a.ranks, vec![12, 12, 6]);
        assert_eq!(a.sum_r(), 30);
    }

    #[test]
    fn budget_is_left_unused_when_every_module_is_at_r_max() {
        let m = [AllocModule {
            energy: 0.5,
            d_in: 2,
            d_out: 3,
        }; 3];
        let a = allocate(&m, plain(30)).unwrap();
        assert_eq!(a.r_max, vec![2, 2, 2]);
        assert_eq!(a.ranks, vec![2, 2, 2]);
        assert_eq!(a.sum_r(), 6);
        assert!(a.increments.is_empty());
    }

    #[test]
    fn r_min_override_raises_the_floor_and_can_make_the_budget_infeasible() {
        // r0 = 3 (P = 9): w = [0.9, 0.1, 0.5] (mean 0.5): r* = [5.4, 0.6, 3] ->
        // with r_min = 2: [5, 2, 3] = 10 > 9: decrement the highest E above 2:
        // module 0 is E = 0.1, module 2 is E = 0.5 -> module 2.
        let spec = AllocBudget {
            budget: 9,
            r_min: Some(2),
            r_max: None,
        };
        let a = allocate(&modules(&[0.1, 0.9, 0.5], 64), spec).unwrap();
        assert_eq!(a.r_min, 2);
        assert_eq!(a.r_round, vec![5, 2, 3]);
        assert_eq!(a.decrements, vec![2]);
        assert_eq!(a.ranks, vec![5, 2, 2]);

        // P = 5, N = 3, r_min = 2: every module at 2 sums to 6 > 5
        let spec = AllocBudget {
            budget: 5,
            r_min: Some(2),
            r_max: None,
        };
        assert_eq!(
            allocate(&modules(&[0.1, 0.9, 0.5], 64), spec),
            Err(AllocError::BudgetBelowRMin {
                budget: 5,
                r_min: 2,
                sum: 6
            })
        );
    }

    #[test]
    fn all_zero_w_gives_r0() {
        let a = allocate(&modules(&[1.0, 1.0, 1.0], 64), plain(10)).unwrap();
        assert_eq!(a.mean_w, 0.0);
        assert_eq!(a.r_star, vec![3.0; 3]);
        assert_eq!(a.r_round, vec![3, 3, 3]);
        assert_eq!(a.increments, vec![0]);
    }

    #[test]
    fn infeasible_and_invalid_inputs_are_errors() {
        let m = modules(&[0.5; 4], 64);
        assert_eq!(
            allocate(&m, plain(3)),
            Err(AllocError::BudgetBelowModuleCount { budget: 3, modules: 4 })
        );
        assert_eq!(
            uniform_rank(3, 4),
            Err(AllocError::BudgetBelowModuleCount { budget: 3, modules: 4 })
        );
        assert_eq!(uniform_rank(4, 4), Ok(1));
        assert_eq!(allocate(&[], plain(3)), Err(AllocError::NoModules));
        let spec = AllocBudget {
            budget: 8,
            r_min: Some(3),
            r_max: Some(2),
        };
        assert_eq!(
            allocate(&m, spec),
            Err(AllocError::RMinAboveRMax { r_min: 3, r_max: 2 })
        );
        let spec = AllocBudget {
            budget: 8,
            r_min: Some(0),
            r_max: None,
        };
        assert_eq!(allocate(&m, spec), Err(AllocError::ZeroBound { bound: "r_min" }));
        let spec = AllocBudget {
            budget: 8,
            r_min: None,
            r_max: Some(0),
        };
        assert_eq!(allocate(&m, spec), Err(AllocError::ZeroBound { bound: "r_max" }));
        for bad in [f64::NAN, -0.1, 1.5] {
            let mut m = m.clone();
            m[2].energy = bad;
            assert!(matches!(
                allocate(&m, plain(8)),
                Err(AllocError::InvalidEnergy { module: 2, .. })
            ));
        }
        let mut m = m.clone();
        m[1].d_in = 0;
        assert!(matches!(
            allocate(&m, plain(8)),
            Err(AllocError::EmptyModule { module: 1, .. })
        ));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn inputs() -> impl Strategy<Value = (Vec<AllocModule>, u64)> {
            let module = (0.0f64..=1.0, 1u64..40, 1u64..40).prop_map(|(energy, d_in, d_out)| AllocModule {
                energy,
                d_in,
                d_out,
            });
            (prop::collection::vec(module, 1..12), 0u64..200).prop_map(|(m, extra)| {
                let p = m.len() as u64 + extra;
                (m, p)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// The consequences SEMANTICS §8 lists, for r_min = 1.
            #[test]
            fn consequences_of_section_8_hold((m, p) in inputs()) {
                let a = allocate(&m, plain(p)).unwrap();
                let sum = a.sum_r();
                prop_assert!(sum <= p);
                let all_at_max = a.ranks.iter().zip(&a.r_max).all(|(r, hi)| r == hi);
                prop_assert!(sum == p || all_at_max);
                prop_assert!(a.decrements.is_empty() || a.increments.is_empty());
                for l in 0..m.len() {
                    prop_assert!(a.ranks[l] >= 1 && a.ranks[l] <= a.r_max[l]);
                    for q in 0..m.len() {
                        if m[l].energy < m[q].energy && a.ranks[l] < a.ranks[q] {
                            prop_assert_eq!(a.ranks[l], a.r_max[l]);
                        }
                    }
                }
            }
        }
    }
}
