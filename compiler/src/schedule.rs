//! Freeze schedules of B (`freeze_b`): how many leading columns are frozen at each step.
//!
//! SEMANTICS.md §4: T total optimizer steps, t = 0..T-1,
//! `t_i = max(1, round_half_up(p T))` with `p T` in float64, and
//! `linear(p)`: `f(t) = min(r, floor(r t / t_i))`; `at(p)`: 0 before `t_i`,
//! r from it on; `never`: 0; `now`: r.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// Columns freeze one after another until all are frozen at `p` of the run.
    Linear(f64),
    /// All columns freeze at once at `p` of the run.
    At(f64),
    Never,
    /// B never trains.
    Now,
}

impl Schedule {
    /// `t_i = max(1, round_half_up(p T))`, for the schedules that have one.
    pub fn t_i(self, total_steps: u64) -> Option<u64> {
        match self {
            Schedule::Linear(p) | Schedule::At(p) => {
                let x = (p * total_steps as f64 + 0.5).floor();
                Some((x.max(0.0) as u64).max(1))
            }
            Schedule::Never | Schedule::Now => None,
        }
    }

    /// `f(t)`: the number of frozen leading columns of B (of `r`) at step `t`.
    pub fn frozen_cols(self, t: u64, total_steps: u64, r: u64) -> u64 {
        match self {
            Schedule::Never => 0,
            Schedule::Now => r,
            Schedule::Linear(_) => {
                let ti = self.t_i(total_steps).unwrap_or(1);
                // r t can exceed u64 only for absurd inputs; saturate.
                (r.saturating_mul(t) / ti).min(r)
            }
            Schedule::At(_) => {
                let ti = self.t_i(total_steps).unwrap_or(1);
                if t < ti { 0 } else { r }
            }
        }
    }

    /// The first step at which every column is frozen, if that happens.
    pub fn all_frozen_from(self, total_steps: u64) -> Option<u64> {
        match self {
            Schedule::Never => None,
            Schedule::Now => Some(0),
            Schedule::Linear(_) | Schedule::At(_) => self.t_i(total_steps),
        }
    }

    /// Sum over the run of trainable columns: `sum_t (r - f(t))`, in closed
    /// form (a run of 2^32 steps costs no more than one of 10); saturating.
    pub fn trainable_column_steps(self, total_steps: u64, r: u64) -> u64 {
        let sum: u128 = match self {
            Schedule::Never => u128::from(r) * u128::from(total_steps),
            Schedule::Now => 0,
            Schedule::At(_) => {
                let ti = self.t_i(total_steps).unwrap_or(1);
                u128::from(r) * u128::from(ti.min(total_steps))
            }
            Schedule::Linear(_) => {
                // f(t) = floor(r t / t_i) < r for t < t_i, and r from t_i on.
                let ti = self.t_i(total_steps).unwrap_or(1);
                let m = ti.min(total_steps);
                u128::from(r) * u128::from(m) - floor_sum(u128::from(m), u128::from(ti), u128::from(r), 0)
            }
        };
        u64::try_from(sum).unwrap_or(u64::MAX)
    }
}

/// `sum_{i=0}^{n-1} floor((a i + b) / m)` in O(log) steps (the classic
/// Euclid-like reduction), for `m > 0`.
fn floor_sum(mut n: u128, mut m: u128, mut a: u128, mut b: u128) -> u128 {
    let mut sum = 0u128;
    loop {
        if a >= m {
            sum += n * n.saturating_sub(1) / 2 * (a / m);
            a %= m;
        }
        if b >= m {
            sum += n * (b / m);
            b %= m;
        }
        let y_max = a * n + b;
        if y_max < m {
            return sum;
        }
        n = y_max / m;
        b = y_max % m;
        std::mem::swap(&mut m, &mut a);
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Linear(p) => write!(f, "linear({p})"),
            Schedule::At(p) => write!(f, "at({p})"),
            Schedule::Never => write!(f, "never"),
            Schedule::Now => write!(f, "now"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn golden_linear_schedule() {
        // golden lamda_qv_r4_linear03: r = 4, T = 10, p = 0.3 -> t_i = 3.
        let s = Schedule::Linear(0.3);
        assert_eq!(s.t_i(10), Some(3));
        let f: Vec<u64> = (0..10).map(|t| s.frozen_cols(t, 10, 4)).collect();
        assert_eq!(f, vec![0, 1, 2, 4, 4, 4, 4, 4, 4, 4]);
    }

    #[test]
    fn rounding_is_half_up_and_at_least_one() {
        assert_eq!(Schedule::At(0.25).t_i(10), Some(3)); // 2.5 -> 3
        assert_eq!(Schedule::At(0.01).t_i(10), Some(1)); // 0.1 -> 0 -> max(1, 0)
        let s = Schedule::At(0.5);
        assert_eq!(
            (0..4).map(|t| s.frozen_cols(t, 4, 3)).collect::<Vec<_>>(),
            vec![0, 0, 3, 3]
        );
    }

    #[test]
    fn column_steps_in_closed_form_match_the_sum() {
        for total in [1u64, 2, 3, 7, 10, 17, 100, 783] {
            for r in [1u64, 3, 4, 16, 17, 64] {
                for s in [
                    Schedule::Linear(0.3),
                    Schedule::Linear(1.0),
                    Schedule::Linear(0.01),
                    Schedule::Linear(0.77),
                    Schedule::At(0.5),
                    Schedule::At(1.0),
                    Schedule::Never,
                    Schedule::Now,
                ] {
                    let brute: u64 = (0..total).map(|t| r - s.frozen_cols(t, total, r)).sum();
                    assert_eq!(s.trainable_column_steps(total, r), brute, "{s} T={total} r={r}");
                }
            }
        }
        // a run of 2^32 steps, at once
        assert_eq!(Schedule::At(0.5).trainable_column_steps(1 << 32, 8), 8 << 31);
    }

    #[test]
    fn column_steps_sum_the_schedule() {
        assert_eq!(Schedule::Never.trainable_column_steps(10, 4), 40);
        assert_eq!(Schedule::Now.trainable_column_steps(10, 4), 0);
        assert_eq!(Schedule::Linear(0.3).trainable_column_steps(10, 4), 4 + 3 + 2);
    }
}
