//! Pooling of an encoder's hidden states per sequence (the classification head's input), and the sum of rows (a bias's gradient).

use rayon::prelude::*;

use super::{OpsError, check_len, dims};

/// Validates per-sequence lengths: each in `1..=seq`.
fn lengths_ok(op: &'static str, lengths: &[i64], batch: usize, seq: usize) -> Result<(), OpsError> {
    check_len(op, "lengths", lengths.len(), batch)?;
    match lengths.iter().position(|&l| l < 1 || l as u64 > seq as u64) {
        None => Ok(()),
        Some(b) => Err(OpsError::Config {
            op,
            msg: format!("sequence {b} has length {}, expected 1..={seq}", lengths[b]),
        }),
    }
}

/// `y (batch, d)`: for each sequence b of `h (batch * seq, d)`, its first row,
/// or with `mean` the mean of its first `lengths[b]` rows (the tokens that are
/// not padding).
pub fn pool(
    h: &[f32],
    lengths: &[i64],
    batch: usize,
    seq: usize,
    d: usize,
    mean: bool,
    y: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "pool";
    check_len(OP, "h", h.len(), dims(OP, &[batch, seq, d])?)?;
    check_len(OP, "y", y.len(), dims(OP, &[batch, d])?)?;
    lengths_ok(OP, lengths, batch, seq)?;
    for (b, yb) in y.chunks_exact_mut(d.max(1)).enumerate().take(batch) {
        let rows = &h[b * seq * d..(b + 1) * seq * d];
        if !mean {
            yb.copy_from_slice(&rows[..d]);
            continue;
        }
        let len = lengths[b] as usize;
        yb.fill(0.0);
        for r in rows.chunks_exact(d).take(len) {
            for (a, &x) in yb.iter_mut().zip(r) {
                *a += x;
            }
        }
        let inv = 1.0 / len as f32;
        yb.iter_mut().for_each(|a| *a *= inv);
    }
    Ok(())
}

/// The gradient of [`pool`]: `dh (batch * seq, d)` holds `g[b]` on the row
/// that was read (or `g[b] / lengths[b]` on each of the first `lengths[b]`
/// rows with `mean`) and zeros elsewhere.
pub fn pool_grad(
    g: &[f32],
    lengths: &[i64],
    batch: usize,
    seq: usize,
    d: usize,
    mean: bool,
    dh: &mut [f32],
) -> Result<(), OpsError> {
    const OP: &str = "pool_grad";
    check_len(OP, "g", g.len(), dims(OP, &[batch, d])?)?;
    check_len(OP, "dh", dh.len(), dims(OP, &[batch, seq, d])?)?;
    lengths_ok(OP, lengths, batch, seq)?;
    dh.fill(0.0);
    for (b, gb) in g.chunks_exact(d.max(1)).enumerate().take(batch) {
        let rows = &mut dh[b * seq * d..(b + 1) * seq * d];
        if !mean {
            rows[..d].copy_from_slice(gb);
            continue;
        }
        let len = lengths[b] as usize;
        let inv = 1.0 / len as f32;
        for r in rows.chunks_exact_mut(d).take(len) {
            for (o, &x) in r.iter_mut().zip(gb) {
                *o = x * inv;
            }
        }
    }
    Ok(())
}

/// `db (k)` = the sum over rows of `g (n, k)`, in f64 per column.
pub fn col_sum(g: &[f32], k: usize, db: &mut [f32]) -> Result<(), OpsError> {
    const OP: &str = "col_sum";
    check_len(OP, "db", db.len(), k)?;
    if k == 0 || !g.len().is_multiple_of(k) {
        return Err(OpsError::Config {
            op: OP,
            msg: format!("{} values are not rows of {k}", g.len()),
        });
    }
    db.par_iter_mut().enumerate().for_each(|(j, o)| {
        *o = g.iter().skip(j).step_by(k).map(|&x| f64::from(x)).sum::<f64>() as f32;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reads_the_first_row_or_the_mean_of_the_unpadded_rows() {
        // batch 2, seq 3, d 2
        let h: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut y = vec![0.0; 4];
        pool(&h, &[3, 2], 2, 3, 2, false, &mut y).unwrap();
        assert_eq!(y, [0.0, 1.0, 6.0, 7.0]);
        pool(&h, &[3, 2], 2, 3, 2, true, &mut y).unwrap();
        assert_eq!(y, [2.0, 3.0, 7.0, 8.0]);
    }

    #[test]
    fn pool_grad_is_the_transpose_of_pool() {
        // <pool(h), g> == <h, pool_grad(g)> for any h, g
        let (batch, seq, d) = (3, 4, 5);
        let lengths = [4, 1, 2];
        let h: Vec<f32> = (0..batch * seq * d).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        let g: Vec<f32> = (0..batch * d).map(|i| ((i * 13 % 7) as f32) - 3.0).collect();
        for mean in [false, true] {
            let mut y = vec![0.0; batch * d];
            let mut dh = vec![1.0; batch * seq * d];
            pool(&h, &lengths, batch, seq, d, mean, &mut y).unwrap();
            pool_grad(&g, &lengths, batch, seq, d, mean, &mut dh).unwrap();
            let lhs: f64 = y.iter().zip(&g).map(|(a, b)| f64::from(a * b)).sum();
            let rhs: f64 = h.iter().zip(&dh).map(|(a, b)| f64::from(a * b)).sum();
            assert!((lhs - rhs).abs() < 1e-4, "mean {mean}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let h = vec![0.0; 12];
        let mut y = vec![0.0; 4];
        for bad in [[0, 3], [3, 4], [-1, 1]] {
            assert!(pool(&h, &bad, 2, 3, 2, true, &mut y).is_err());
        }
    }

    #[test]
    fn col_sum_adds_rows() {
        let g = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut db = [0.0; 3];
        col_sum(&g, 3, &mut db).unwrap();
        assert_eq!(db, [5.0, 7.0, 9.0]);
        assert!(col_sum(&g, 4, &mut [0.0; 4]).is_err());
    }
}
