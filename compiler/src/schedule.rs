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

    /// Sum over the run of trainable columns: `sum_t (r - f(t))`.
    pub fn trainable_column_steps(self, total_steps: u64, r: u64) -> u64 {
        match self {
            Schedule::Never => r * total_steps,
            Schedule::Now => 0,
            _ => (0..total_steps).map(|t| r - self.frozen_cols(t, total_steps, r)).sum(),
        }
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
    fn column_steps_sum_the_schedule() {
        assert_eq!(Schedule::Never.trainable_column_steps(10, 4), 40);
        assert_eq!(Schedule::Now.trainable_column_steps(10, 4), 0);
        assert_eq!(Schedule::Linear(0.3).trainable_column_steps(10, 4), 4 + 3 + 2);
    }
}
