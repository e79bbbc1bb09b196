//! Element-wise helpers compiled three times (baseline, AVX2, AVX-512F) and
//! picked at run time: a vectorisable `exp`, the instruction-set probe, and
//! the macro that makes the copies. Used by attention and the LM-head loss.

/// `exp(x)` for softmaxes, written so that a loop over a slice compiles to
/// SIMD code (libm's `expf` is a call per element, and took half the time of
/// the attention kernel once the masked work was skipped). Cephes' `expf`:
/// `exp(x) = 2^n exp(r)` with `n = round(x / ln 2)`, `r = x - n ln 2` in two
/// parts, and a polynomial for `exp(r)` (peak error 4e-9 on `|r| <= ln 2 / 2`);
/// the result is within 1 ulp of the exact value. `2^n` is built from its
/// bits. Plain multiplies and adds, no `mul_add`, so every instruction set
/// rounds alike.
///
/// Range: accurate on `[-87.33, 88.37]`; below, where the exact value is
/// under `2^-126`, it returns 0 (libm returns a subnormal); above, `+inf`
/// (libm overflows from 88.72). The kernel takes it of `x <= 0` only.
/// NaN stays NaN, and `exp(0) = 1` exactly.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the fitted coefficients, as printed by the fit
pub(crate) fn exp_approx(x: f32) -> f32 {
    const LO: f32 = -87.336_54; // ln(2^-126)
    const HI: f32 = 88.376; // just under ln(2^127.5): n <= 127
    const LN2_HI: f32 = 0.693_359_4; // 355 / 512: n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 - LN2_HI
    // 1.5 * 2^23: adding it rounds to an integer, held in the low mantissa bits
    const ROUND: f32 = 12_582_912.0;
    // `clamp` passes NaN through
    let xc = x.clamp(LO, HI);
    let kf = xc * std::f32::consts::LOG2_E + ROUND;
    let n_bits = kf.to_bits(); // bits(ROUND) + n, n in -126 ..= 127
    let nf = kf - ROUND;
    let r = xc - nf * LN2_HI - nf * LN2_LO;
    let poly = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let er = poly * (r * r) + r + 1.0;
    // 2^n = bits (n + 127) << 23; bits(ROUND) << 23 vanishes mod 2^32
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        er * scale
    }
}

/// The instruction set the element-wise passes run with, detected once per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Simd {
    /// The build's baseline target (SSE2 on x86-64: 4 lanes).
    Base,
    /// AVX2: 8 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F: 16 lanes (on Zen 4, ~5% faster than AVX2 here).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    /// Every instruction set this CPU can run, the baseline first (for
    /// tests that check the copies agree).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Simd> {
        #[allow(unused_mut)]
        let mut sets = vec![Simd::Base];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                sets.push(Simd::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                sets.push(Simd::Avx512);
            }
        }
        sets
    }

    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Base
    }
}

/// `fn $name(simd: Simd, args..)`: runs `$imp(args..)` as compiled for the
/// baseline target, or a copy compiled with AVX2 or AVX-512F enabled, as
/// `simd` says. The copies are the same Rust code, which has no `mul_add`
/// and whose reductions have a fixed order, so they round alike: the
/// instruction set changes the speed, not the result.
macro_rules! multiversion {
    ($name:ident = $imp:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        fn $name(simd: Simd, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) {
                $imp($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            fn avx512($($arg: $ty),*) {
                $imp($($arg),*)
            }
            match simd {
                Simd::Base => $imp($($arg),*),
                // SAFETY: `Simd::detect` returns `Avx2` only if the CPU has AVX2.
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: `Simd::detect` returns `Avx512` only if the CPU has AVX-512F.
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe { avx512($($arg),*) },
            }
        }
    };
}
pub(crate) use multiversion;
