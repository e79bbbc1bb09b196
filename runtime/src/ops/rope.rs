//! Rotary position embedding, rotate-half (Hugging Face, non-interleaved) form.
//!
//! For `j < half = head_dim / 2` and position `p`, the angle is
//! `p * inv_freq[j]` with `inv_freq[j] = 1 / theta^(2j / head_dim)`, shared by
//! element `j` and `j + half` of every head. The tables are built the way
//! transformers builds them, in f32: the exponent `2j / head_dim` in f32,
//! `theta^e` rounded to f32, its reciprocal in f32, the angle `p * inv_freq`
//! in f32, then cos / sin of that f32 angle (evaluated in f64 and rounded
//! once, i.e. correctly rounded like PyTorch's to within an ulp).
//!
//! The kernels rotate in place: the rotation is orthogonal, so the backward
//! is the inverse rotation (by `-angle`) applied to the gradient, and nothing
//! is saved. Positions are `row % seq` (every row of the batch is a full
//! sequence starting at position 0).

use rayon::prelude::*;

use super::{OpsError, check_len, dims, rows_per_task};

/// cos / sin tables for positions `0 .. seq` and one head size.
#[derive(Clone, Debug)]
pub struct RopeTable {
    seq: usize,
    head_dim: usize,
    // (seq, head_dim / 2)
    cos: Vec<f32>,
    // (seq, head_dim / 2)
    sin: Vec<f32>,
}

impl RopeTable {
    /// cos of every (position, frequency): (seq, head_dim / 2).
    pub fn cos(&self) -> &[f32] {
        &self.cos
    }
    /// sin of every (position, frequency): (seq, head_dim / 2).
    pub fn sin(&self) -> &[f32] {
        &self.sin
    }
    /// Tables for positions `0 .. seq`, even `head_dim`, base `theta`.
    pub fn new(seq: usize, head_dim: usize, theta: f64) -> Result<Self, OpsError> {
        const OP: &str = "RopeTable::new";
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(OpsError::Config {
                op: OP,
                msg: format!("head_dim must be even and positive, got {head_dim}"),
            });
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(OpsError::Config {
                op: OP,
                msg: format!("rope theta must be positive and finite, got {theta}"),
            });
        }
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| {
                let e = (2 * j) as f32 / head_dim as f32;
                let p = theta.powf(e as f64) as f32;
                1.0 / p
            })
            .collect();
        let len = dims(OP, &[seq, half])?;
        let mut cos = Vec::with_capacity(len);
        let mut sin = Vec::with_capacity(len);
        for p in 0..seq {
            for &f in &inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(RopeTable {
            seq,
            head_dim,
            cos,
            sin,
        })
    }

    /// Sequence length the table covers.
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// Head size the table is for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// `(cos, sin)` of position `p` (each of length `head_dim / 2`).
    fn row(&self, p: usize) -> (&[f32], &[f32]) {
        let half = self.head_dim / 2;
        (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half])
    }
}

/// Rotates every head of every row by the angles of its position, in place.
/// `inverse = false` is the forward rotation `R(t)`, `true` its inverse `R(-t)`.
///
/// `start = None`: row i is at position `i % seq` (full sequences, training);
/// `Some(s)`: row i is at position `s + i` (the rows a KV-cached decoder
/// appends after `s` cached positions), which must stay below `table.seq()`.
fn rotate(
    op: &'static str,
    table: &RopeTable,
    x: &mut [f32],
    n: usize,
    heads: usize,
    inverse: bool,
    start: Option<usize>,
) -> Result<(), OpsError> {
    let (seq, hd) = (table.seq, table.head_dim);
    let width = dims(op, &[heads, hd])?;
    check_len(op, "x", x.len(), dims(op, &[n, width])?)?;
    match start {
        None if seq == 0 || !n.is_multiple_of(seq) => {
            return Err(OpsError::Config {
                op,
                msg: format!("n = {n} rows is not a whole number of sequences of {seq}"),
            });
        }
        Some(s) if s.checked_add(n).is_none_or(|end| end > seq) => {
            return Err(OpsError::Config {
                op,
                msg: format!("positions {s} .. {s} + {n} run past the table's {seq}"),
            });
        }
        _ => {}
    }
    if width == 0 {
        return Ok(());
    }
    let half = hd / 2;
    let rows = rows_per_task(width);
    x.par_chunks_mut(rows * width).enumerate().for_each(|(chunk, x)| {
        for (i, row) in x.chunks_exact_mut(width).enumerate() {
            let row_index = chunk * rows + i;
            let (cos, sin) = table.row(start.map_or(row_index % seq, |s| s + row_index));
            for head in row.chunks_exact_mut(hd) {
                let (a, b) = head.split_at_mut(half);
                for j in 0..half {
                    let (x1, x2) = (a[j], b[j]);
                    if inverse {
                        // R(-t): [x1 c + x2 s, x2 c - x1 s]
                        a[j] = x1 * cos[j] + x2 * sin[j];
                        b[j] = x2 * cos[j] - x1 * sin[j];
                    } else {
                        // q cos + rotate_half(q) sin, rotate_half([a, b]) = [-b, a]
                        a[j] = x1 * cos[j] + (-x2) * sin[j];
                        b[j] = x2 * cos[j] + x1 * sin[j];
                    }
                }
            }
        }
    });
    Ok(())
}

/// RoPE forward in place: `x <- x cos + rotate_half(x) sin`, per head,
/// `rotate_half([a, b]) = [-b, a]`, position of row i = `i % seq`.
///
/// x: `(n, heads * head_dim)` with `n` a multiple of `table.seq()`. Nothing is
/// saved for the backward.
pub fn rope_forward(table: &RopeTable, x: &mut [f32], n: usize, heads: usize) -> Result<(), OpsError> {
    rotate("rope_forward", table, x, n, heads, false, None)
}

/// RoPE backward in place on the gradient: the forward is, per pair
/// `(x1, x2) = (x[j], x[j + half])`, the rotation `R(t) = [[c, -s], [s, c]]`,
/// so `dx = R(t)^T dy = R(-t) dy`:
/// `dx1 = dy1 c + dy2 s`, `dx2 = dy2 c - dy1 s`.
///
/// g: `(n, heads * head_dim)`, overwritten with `dL/dx`.
pub fn rope_backward(table: &RopeTable, g: &mut [f32], n: usize, heads: usize) -> Result<(), OpsError> {
    rotate("rope_backward", table, g, n, heads, true, None)
}

/// RoPE forward in place for rows at consecutive positions `start ..
/// start + n` (one sequence continued by a KV-cached decoder): the same
/// rotation as [`rope_forward`], row i at position `start + i`.
///
/// x: `(n, heads * head_dim)`; `start + n` must not exceed `table.seq()`.
pub fn rope_forward_at(table: &RopeTable, x: &mut [f32], n: usize, heads: usize, start: usize) -> Result<(), OpsError> {
    rotate("rope_forward_at", table, x, n, heads, false, Some(start))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, dot, fd_grad, to64};

    /// Independent f64 reference with the angles computed in f64 from scratch.
    fn rope_ref(x: &[f64], seq: usize, heads: usize, hd: usize, theta: f64) -> Vec<f64> {
        let width = heads * hd;
        let mut out = x.to_vec();
        for (i, row) in x.chunks(width).enumerate() {
            let p = (i % seq) as f64;
            for h in 0..heads {
                for j in 0..hd {
                    let jj = j % (hd / 2);
                    let ang = p * theta.powf(-(2.0 * jj as f64) / hd as f64);
                    let xr = row[h * hd + j];
                    let rot = if j < hd / 2 {
                        -row[h * hd + j + hd / 2]
                    } else {
                        row[h * hd + j - hd / 2]
                    };
                    out[i * width + h * hd + j] = xr * ang.cos() + rot * ang.sin();
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_reference_and_backward_is_fd_gradient() {
        let mut rng = Rng::new(41);
        for (batch, seq, heads, hd, theta) in [
            (1usize, 1usize, 1usize, 2usize, 10000.0),
            (2, 5, 3, 6, 10000.0),
            (1, 17, 1, 16, 500.0),
        ] {
            let n = batch * seq;
            let table = RopeTable::new(seq, hd, theta).unwrap();
            let x = rng.vec(n * heads * hd);
            let mut y = x.clone();
            rope_forward(&table, &mut y, n, heads).unwrap();
            let x64 = to64(&x);
            assert_close("y", &y, &rope_ref(&x64, seq, heads, hd, theta), 1e-5, 1e-5);

            let g = rng.vec(n * heads * hd);
            let g64 = to64(&g);
            let mut dx = g.clone();
            rope_backward(&table, &mut dx, n, heads).unwrap();
            let fd = fd_grad(&x64, 1e-6, |x| dot(&g64, &rope_ref(x, seq, heads, hd, theta)));
            assert_close("dx", &dx, &fd, 1e-5, 1e-5);

            // backward undoes forward
            rope_backward(&table, &mut y, n, heads).unwrap();
            assert_close("roundtrip", &y, &x64, 1e-6, 0.0);
        }
    }

    #[test]
    fn rows_at_an_offset_are_the_rows_of_the_full_sequence() {
        let mut rng = Rng::new(7);
        let (seq, heads, hd) = (11usize, 3usize, 6usize);
        let table = RopeTable::new(seq, hd, 10000.0).unwrap();
        let x = rng.vec(seq * heads * hd);
        let want = rope_ref(&to64(&x), seq, heads, hd, 10000.0);
        for (start, n) in [(0usize, 11usize), (4, 1), (10, 1), (3, 5)] {
            let w = heads * hd;
            let mut y = x[start * w..(start + n) * w].to_vec();
            rope_forward_at(&table, &mut y, n, heads, start).unwrap();
            assert_close("y", &y, &want[start * w..(start + n) * w], 1e-5, 1e-5);
        }
        let mut y = vec![0.0; 2 * heads * hd];
        assert!(rope_forward_at(&table, &mut y, 2, heads, 10).is_err()); // positions 10, 11 of 11
    }

    #[test]
    fn rejects_bad_config() {
        assert!(RopeTable::new(4, 5, 10000.0).is_err());
        let t = RopeTable::new(4, 4, 10000.0).unwrap();
        let mut x = vec![0.0; 6 * 4];
        assert!(rope_forward(&t, &mut x, 6, 1).is_err()); // 6 rows, seq 4
    }
}
