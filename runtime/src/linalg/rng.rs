//! A small seeded PRNG: splitmix64 (seeding) and xoshiro256** (generation).
//!
//! Both follow Vigna's reference C code (prng.di.unimi.it) bit for bit, so a
//! seed gives the same stream on every platform. They are not
//! cryptographic. PyTorch's generator is a different algorithm: a seed here
//! does not reproduce a PyTorch initialisation (the golden LoRA cases store
//! their initial A explicitly for that reason).

/// splitmix64: a 64-bit state advanced by a Weyl increment and mixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose state is `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// xoshiro256**: 256 bits of state, period 2^256 - 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xoshiro256StarStar {
    s: [u64; 4],
}

impl Xoshiro256StarStar {
    /// A generator with the given raw state. The all-zero state is a fixed
    /// point of the recurrence; it is replaced by `seed_from_u64(0)`'s state.
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] {
            return Self::seed_from_u64(0);
        }
        Self { s }
    }

    /// A generator whose state is four outputs of splitmix64 seeded with `seed`
    /// (the seeding the reference implementation recommends).
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        // splitmix64 is a bijection of its state, so four consecutive outputs
        // are never all zero.
        Self { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform float64 in `[0, 1)`: the top 53 bits of `next_u64` times 2^-53.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal by Box-Muller on two uniforms, `u1` in (0, 1] (as
    /// `1 - next_f64`) and then `u2`: `sqrt(-2 ln u1) cos(2 pi u2)`.
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values: Vigna's reference C code (splitmix64.c, xoshiro256starstar.c).
    #[test]
    fn splitmix64_matches_reference() {
        let mut sm = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| sm.next_u64()).collect();
        assert_eq!(got, SPLITMIX64_SEED_1234567);
    }

    #[test]
    fn xoshiro256starstar_matches_reference() {
        let mut x = Xoshiro256StarStar::from_state([1, 2, 3, 4]);
        let got: Vec<u64> = (0..10).map(|_| x.next_u64()).collect();
        assert_eq!(got, XOSHIRO_STATE_1234);
    }

    #[test]
    fn seeding_uses_splitmix64_and_f64_is_in_unit_interval() {
        let mut sm = SplitMix64::new(42);
        let state = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        assert_eq!(
            Xoshiro256StarStar::seed_from_u64(42),
            Xoshiro256StarStar::from_state(state)
        );
        assert_eq!(
            Xoshiro256StarStar::from_state([0; 4]),
            Xoshiro256StarStar::seed_from_u64(0)
        );
        let mut x = Xoshiro256StarStar::seed_from_u64(3);
        for _ in 0..1000 {
            let u = x.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }

    const SPLITMIX64_SEED_1234567: [u64; 5] = [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ];
    const XOSHIRO_STATE_1234: [u64; 10] = [
        11520,
        0,
        1509978240,
        1215971899390074240,
        1216172134540287360,
        607988272756665600,
        16172922978634559625,
        8476171486693032832,
        10595114339597558777,
        2904607092377533576,
    ];
}
