//! Test helpers for the kernels: a seeded RNG, central finite differences in f64, tolerance checks.
#![allow(clippy::unwrap_used)]

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    /// Next raw 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `len` uniforms in [-1, 1).
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.uniform()).collect()
    }

    /// `len` uniforms in [-scale, scale).
    pub fn vec_scaled(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform() * scale).collect()
    }

    /// Integer in `0 .. n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// f32 -> f64 copy.
pub fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central finite differences of scalar `f` at `x`, in f64, step `h` relative to `max(1, |x_i|)`.
pub fn fd_grad(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xs = x.to_vec();
    (0..x.len())
        .map(|i| {
            let step = h * x[i].abs().max(1.0);
            xs[i] = x[i] + step;
            let up = f(&xs);
            xs[i] = x[i] - step;
            let down = f(&xs);
            xs[i] = x[i];
            (up - down) / (2.0 * step)
        })
        .collect()
}

/// `<g, y>` in f64.
pub fn dot(g: &[f64], y: &[f64]) -> f64 {
    assert_eq!(g.len(), y.len());
    g.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Asserts `|got - want| <= atol + rtol * max|want|` elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = atol + rtol * scale;
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err.is_finite(), "{what}[{i}]: got {g}, want {w}");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: max error {:.3e} at {} (got {}, want {}), tolerance {:.3e} (max|want| {:.3e})",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1],
        tol,
        scale
    );
}
