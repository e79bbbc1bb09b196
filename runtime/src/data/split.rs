//! The held-out part of a data file (`split F` in the train block): which
//! examples or which tail of a text the validation loss and `lamdac eval` use.
//!
//! JSONL examples and token-id rows: `k = max(1, round(F n))` of the `n`
//! items are held out, chosen by a Fisher–Yates permutation driven by
//! SplitMix64 with a fixed seed, so the held-out set depends on the file and
//! `F` only — never on the run's `seed` (another seed must not train on
//! what a first run held out). Plain text: the tail from the first line start
//! at or after byte `(1 - F) len` is held out (contiguous, so that no
//! training window overlaps it).

use super::batcher::SplitMix64;
use super::error::DataError;

/// Seed of the held-out permutation, fixed forever ("held out" in ASCII).
const SPLIT_SEED: u64 = 0x6865_6C64_206F_7574;

/// Which of `n` items are held out at share `fraction`; fails when either
/// part would be empty.
pub fn held_out(n: usize, fraction: f64, path: &std::path::Path) -> Result<Vec<bool>, DataError> {
    let k = ((fraction * n as f64).round() as usize).max(1);
    if k >= n {
        return Err(DataError::Split {
            path: path.to_path_buf(),
            problem: format!(
                "{n} example{} cannot be split {fraction}: nothing would be left to train on",
                if n == 1 { "" } else { "s" }
            ),
        });
    }
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(SPLIT_SEED);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut held = vec![false; n];
    for &i in &order[..k] {
        held[i] = true;
    }
    Ok(held)
}

/// The byte where the held-out tail of a text begins: the first line start
/// at or after `(1 - fraction) len` (a char boundary when the tail has no line
/// break); fails when either part would be empty.
pub fn text_cut(text: &[u8], fraction: f64, path: &std::path::Path) -> Result<usize, DataError> {
    let len = text.len();
    let at = ((1.0 - fraction) * len as f64).round() as usize;
    let at = at.min(len);
    let cut = if at == 0 || text[at - 1] == b'\n' {
        at
    } else if let Some(p) = text[at..].iter().position(|&b| b == b'\n') {
        at + p + 1
    } else {
        // no later line break: the next UTF-8 char boundary
        (at..len).find(|&i| text[i] & 0xC0 != 0x80).unwrap_or(len)
    };
    if cut == 0 || cut >= len || text[cut..].iter().all(u8::is_ascii_whitespace) {
        return Err(DataError::Split {
            path: path.to_path_buf(),
            problem: format!("a text of {len} bytes cannot be split {fraction}: one part would be empty"),
        });
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn held_out_share_is_exact_fixed_and_never_everything() {
        let p = Path::new("x.jsonl");
        let h = held_out(1000, 0.1, p).unwrap();
        assert_eq!(h.iter().filter(|&&b| b).count(), 100);
        // the same set every time, and not simply the first or the last items
        assert_eq!(h, held_out(1000, 0.1, p).unwrap());
        assert!(!h[..100].iter().all(|&b| b) && !h[900..].iter().all(|&b| b));
        assert_eq!(held_out(3, 0.01, p).unwrap().iter().filter(|&&b| b).count(), 1);
        assert!(held_out(1, 0.5, p).is_err());
        assert!(held_out(2, 0.5, p).is_ok());
    }

    #[test]
    fn text_cut_lands_on_a_line_start() {
        let p = Path::new("x.txt");
        let t = b"one\ntwo\nthree\nfour\nfive\n";
        let c = text_cut(t, 0.3, p).unwrap();
        assert_eq!(t[c - 1], b'\n');
        assert_eq!(&t[c..], b"five\n");
        assert!(text_cut(b"no line breaks here at all", 0.5, p).is_ok());
        assert!(text_cut(b"abc\n", 0.1, p).is_err());
        // a cut inside a multi-byte char moves to its end
        let u = "ééééé".as_bytes();
        let c = text_cut(u, 0.5, p).unwrap();
        assert!(std::str::from_utf8(&u[c..]).is_ok());
    }
}
