//! Choosing the next token from logits: greedy, or temperature and top-p (nucleus) sampling.
//!
//! Greedy (temperature 0) takes the first index of the largest logit, as
//! `torch.argmax` does. Sampling divides the logits by the temperature,
//! takes the softmax in f64, keeps the most probable tokens whose cumulative
//! probability first reaches `top_p` (at least one; ties in probability keep
//! the lower id first), and draws from them, renormalised, with a seeded
//! xoshiro256** stream: the same seed, prompt and model give the same text on
//! every machine. The draws do not reproduce PyTorch's sampler (another
//! generator), only its distribution.

use crate::linalg::rng::Xoshiro256StarStar;

/// How tokens are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 for greedy decoding; otherwise the logits are divided by it.
    pub temperature: f32,
    /// Nucleus size in (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// Seed of the sampling stream.
    pub seed: u64,
}

impl Default for Sampling {
    /// Greedy: reproducible, and what the transformers fixtures use.
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A [`Sampling`] with its random stream.
pub struct Sampler {
    cfg: Sampling,
    rng: Xoshiro256StarStar,
}

impl Sampler {
    /// A sampler whose stream starts from `cfg.seed`.
    pub fn new(cfg: Sampling) -> Self {
        Sampler {
            cfg,
            rng: Xoshiro256StarStar::seed_from_u64(cfg.seed),
        }
    }

    /// The next token for one row of logits `(vocab)`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 || !self.cfg.temperature.is_finite() {
            return argmax(logits);
        }
        let t = f64::from(self.cfg.temperature);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return argmax(logits);
        }
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((f64::from(l) - f64::from(max)) / t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        // most probable first; equal probabilities keep the lower id first
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top_p = f64::from(self.cfg.top_p.clamp(f32::MIN_POSITIVE, 1.0));
        let mut kept = 0usize;
        let mut mass = 0.0f64;
        for (_, p) in &probs {
            kept += 1;
            mass += p;
            if mass >= top_p * total {
                break;
            }
        }
        let u = self.rng.next_f64() * mass;
        let mut acc = 0.0f64;
        for (id, p) in &probs[..kept] {
            acc += p;
            if u < acc {
                return *id;
            }
        }
        probs[kept - 1].0
    }
}

/// The first index of the largest value (NaNs never win); 0 for an empty row.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// `log softmax(logits)[id]`, the max subtracted and the sum taken in f64.
pub fn log_prob(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let m = f64::from(max);
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - m).exp()).sum();
    logits
        .get(id as usize)
        .map_or(f64::NEG_INFINITY, |&l| f64::from(l) - m - sum.ln())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest() {
        let mut s = Sampler::new(Sampling::default());
        assert_eq!(s.sample(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn a_small_top_p_is_greedy_and_the_seed_fixes_the_draws() {
        let logits = [0.1f32, 3.0, 0.2, 2.9, -4.0];
        let cfg = Sampling {
            temperature: 1.0,
            top_p: 1e-6,
            seed: 3,
        };
        let mut s = Sampler::new(cfg);
        assert!((0..50).all(|_| s.sample(&logits) == 1));
        let cfg = Sampling { top_p: 1.0, ..cfg };
        let (mut a, mut b) = (Sampler::new(cfg), Sampler::new(cfg));
        let da: Vec<u32> = (0..200).map(|_| a.sample(&logits)).collect();
        let db: Vec<u32> = (0..200).map(|_| b.sample(&logits)).collect();
        assert_eq!(da, db);
        // every token has a chance at top_p 1: the two likely ones dominate
        let ones = da.iter().filter(|&&t| t == 1 || t == 3).count();
        assert!(ones > 150, "{ones}");
        // top_p 0.6 keeps tokens 1 and 3 only (0.50 + 0.45 of the mass)
        let mut c = Sampler::new(Sampling { top_p: 0.6, ..cfg });
        assert!((0..200).all(|_| matches!(c.sample(&logits), 1 | 3)));
    }

    #[test]
    fn sampling_follows_the_tempered_distribution() {
        // two tokens with logits 0 and ln 3: probabilities 1/4 and 3/4 at T = 1,
        // 1/(1 + sqrt 3) and sqrt 3/(1 + sqrt 3) at T = 2
        let logits = [0.0f32, 3.0f32.ln()];
        for (t, want) in [(1.0f32, 0.75f64), (2.0, 3f64.sqrt() / (1.0 + 3f64.sqrt()))] {
            let mut s = Sampler::new(Sampling {
                temperature: t,
                top_p: 1.0,
                seed: 11,
            });
            let n = 20_000;
            let ones = (0..n).filter(|_| s.sample(&logits) == 1).count();
            let got = ones as f64 / n as f64;
            assert!((got - want).abs() < 0.015, "T = {t}: {got} vs {want}");
        }
    }

    #[test]
    fn log_prob_is_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| f64::from(x).exp()).sum();
        for (i, &x) in l.iter().enumerate() {
            assert!((log_prob(&l, i as u32) - (f64::from(x) - z.ln())).abs() < 1e-12);
        }
        assert_eq!(log_prob(&l, 7), f64::NEG_INFINITY);
    }
}
