//! Column blocks of row-major matrices: `split` (one matrix into blocks of
//! its columns) and `concat` (the inverse), as the fused plans use around
//! stacked GEMMs.
//!
//! Both walk blocks of [`ROWS`] rows in parallel: `concat` each row of the
//! wide matrix once, copying every part of it; `split` one pass per part
//! (contiguous writes, no allocation). Pure copies: results are exact.

use rayon::prelude::*;

use super::{OpsError, check_len};

/// Rows per parallel task.
const ROWS: usize = 64;

/// The `outs[i]` (`(n, widths[i])`, as many as `widths`) of `x (n, sum widths)`.
///
/// One parallel pass per part over its columns of `x`: no allocation.
pub fn split_cols(x: &[f32], n: usize, widths: &[usize], outs: &mut [&mut [f32]]) -> Result<(), OpsError> {
    const OP: &str = "split";
    let total: usize = widths.iter().sum();
    check_len(OP, "x", x.len(), n * total)?;
    check_len(OP, "outs", outs.len(), widths.len())?;
    for (o, &w) in outs.iter().zip(widths) {
        check_len(OP, "out", o.len(), n * w)?;
    }
    if n == 0 || total == 0 {
        return Ok(());
    }
    let mut at = 0;
    for (o, &w) in outs.iter_mut().zip(widths) {
        if w > 0 {
            o.par_chunks_mut(ROWS * w).enumerate().for_each(|(b, block)| {
                let r0 = b * ROWS;
                for (r, dst) in block.chunks_exact_mut(w).enumerate() {
                    let src = (r0 + r) * total + at;
                    dst.copy_from_slice(&x[src..src + w]);
                }
            });
        }
        at += w;
    }
    Ok(())
}

/// `y (n, sum widths)` from `xs[i]` (`(n, widths[i])`).
pub fn concat_cols(xs: &[&[f32]], n: usize, widths: &[usize], y: &mut [f32]) -> Result<(), OpsError> {
    const OP: &str = "concat";
    let total: usize = widths.iter().sum();
    check_len(OP, "y", y.len(), n * total)?;
    check_len(OP, "xs", xs.len(), widths.len())?;
    for (x, &w) in xs.iter().zip(widths) {
        check_len(OP, "x", x.len(), n * w)?;
    }
    if n == 0 || total == 0 {
        return Ok(());
    }
    y.par_chunks_mut(ROWS * total).enumerate().for_each(|(b, block)| {
        let r0 = b * ROWS;
        for (r, row) in block.chunks_exact_mut(total).enumerate() {
            let mut at = 0;
            for (x, &w) in xs.iter().zip(widths) {
                row[at..at + w].copy_from_slice(&x[(r0 + r) * w..(r0 + r + 1) * w]);
                at += w;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an element-by-element reference, at row counts around the
    /// task size, with a zero-width part.
    #[test]
    fn split_and_concat_move_every_element_to_its_place() {
        let widths = [3, 0, 5, 1];
        let total: usize = widths.iter().sum();
        for n in [0, 1, 63, 64, 65, 200] {
            let x: Vec<f32> = (0..n * total).map(|i| i as f32).collect();
            let mut outs: Vec<Vec<f32>> = widths.iter().map(|&w| vec![f32::NAN; n * w]).collect();
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            split_cols(&x, n, &widths, &mut views).unwrap();
            let mut at = 0;
            for (o, &w) in outs.iter().zip(&widths) {
                for r in 0..n {
                    for c in 0..w {
                        assert_eq!(o[r * w + c], x[r * total + at + c], "n {n} row {r} col {c}");
                    }
                }
                at += w;
            }
            let refs: Vec<&[f32]> = outs.iter().map(Vec::as_slice).collect();
            let mut y = vec![f32::NAN; n * total];
            concat_cols(&refs, n, &widths, &mut y).unwrap();
            assert_eq!(y, x);
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let (mut a, mut b) = (vec![0.0; 4], vec![0.0; 3]);
        assert!(split_cols(&[0.0; 9], 2, &[2, 2], &mut [&mut a, &mut b]).is_err());
        let mut y = vec![0.0; 8];
        assert!(concat_cols(&[&[0.0; 4], &[0.0; 3]], 2, &[2, 2], &mut y).is_err());
    }
}
