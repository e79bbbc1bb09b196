//! Column blocks of row-major matrices: `split` (one matrix into blocks of
//! its columns) and `concat` (the inverse), as the fused plans use around
//! stacked GEMMs.
//!
//! Both walk blocks of [`ROWS`] rows in parallel, and within a block each
//! row once, copying every part of it: one pass over the wide matrix, with
//! contiguous writes into every narrow one. Pure copies: results are exact.

use rayon::prelude::*;

use super::{OpsError, check_len};

/// Rows per parallel task.
const ROWS: usize = 64;

/// The `outs[i]` (`(n, widths[i])`, as many as `widths`) of `x (n, sum widths)`.
pub fn split_cols(x: &[f32], n: usize, widths: &[usize], outs: &mut [Vec<f32>]) -> Result<(), OpsError> {
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
    let mut tasks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(ROWS)).map(|_| Vec::new()).collect();
    for (o, &w) in outs.iter_mut().zip(widths) {
        // a zero-width part has no rows to give: its tasks get empty slices
        let mut chunks = o.chunks_mut((ROWS * w).max(1));
        for t in tasks.iter_mut() {
            t.push(chunks.next().unwrap_or_default());
        }
    }
    tasks.into_par_iter().enumerate().for_each(|(b, mut parts)| {
        let r0 = b * ROWS;
        let rows = ROWS.min(n - r0);
        for r in 0..rows {
            let row = &x[(r0 + r) * total..(r0 + r + 1) * total];
            let mut at = 0;
            for (dst, &w) in parts.iter_mut().zip(widths) {
                dst[r * w..(r + 1) * w].copy_from_slice(&row[at..at + w]);
                at += w;
            }
        }
    });
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
            split_cols(&x, n, &widths, &mut outs).unwrap();
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
        let mut outs = vec![vec![0.0; 4], vec![0.0; 3]];
        assert!(split_cols(&[0.0; 9], 2, &[2, 2], &mut outs).is_err());
        let mut y = vec![0.0; 8];
        assert!(concat_cols(&[&[0.0; 4], &[0.0; 3]], 2, &[2, 2], &mut y).is_err());
    }
}
