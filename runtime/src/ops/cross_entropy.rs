//! Causal-LM cross-entropy (SEMANTICS §7): logits at position i predict label i+1.
//!
//! Loss `L = (1/N) sum_{counted i} (lse(logits_i) - logits_i[label_{i+1}])`
//! over positions `i < seq - 1` of every sequence whose shifted label is not
//! -100; N is their number. Rows are independent (log-softmax in f32 with the
//! max subtracted, as PyTorch does) and run in parallel; the N per-row losses
//! are summed in f64 and the mean rounded once, which costs nothing and keeps
//! the scalar independent of the row split. The gradient is written in the
//! same pass: `dlogits_i = (softmax(logits_i) - onehot(label_{i+1})) / N` for
//! counted rows and 0 elsewhere (the last position of every sequence, and
//! ignored labels).

use rayon::prelude::*;

use super::{OpsError, check_len, dims, rows_per_task};

/// Label value that excludes a position from the loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Result of [`causal_lm_cross_entropy`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    /// Mean loss over the counted positions (0 when none are counted).
    pub loss: f32,
    /// Number of counted positions N.
    pub count: usize,
}

/// The shifted label of row `row` (position `t = row % seq`): `labels[row + 1]`
/// if `t < seq - 1`, else ignored. Validates the range.
fn target(labels: &[i64], row: usize, seq: usize, vocab: usize) -> Result<Option<usize>, OpsError> {
    if row % seq == seq - 1 {
        return Ok(None);
    }
    let id = labels[row + 1];
    if id == IGNORE_INDEX {
        return Ok(None);
    }
    usize::try_from(id)
        .ok()
        .filter(|&t| t < vocab)
        .map(Some)
        .ok_or(OpsError::IdOutOfRange {
            op: "causal_lm_cross_entropy",
            row: row + 1,
            id,
            vocab,
        })
}

/// Per-chunk loss sums, reused across calls.
static CHUNK_SUMS: super::ScratchPool<Vec<f64>> = super::ScratchPool::new();

/// Causal-LM cross-entropy loss and, if asked, its gradient.
///
/// logits: `(batch * seq, vocab)`, labels: `(batch * seq)` (unshifted, as in
/// HF; -100 = ignore), dlogits: `(batch * seq, vocab)` or `None` for an
/// evaluation-only forward. With `z = logits_i`, `y = label_{i+1}`,
/// `loss_i = log sum_v exp(z_v) - z_y` and `d loss_i / d z = softmax(z) - onehot(y)`;
/// the mean divides both by N. When no position counts, the loss is 0 and the
/// gradient is 0 (PyTorch would give NaN); `count` tells the caller.
/// A label outside `0 .. vocab` (other than -100) is an error.
pub fn causal_lm_cross_entropy(
    logits: &[f32],
    labels: &[i64],
    batch: usize,
    seq: usize,
    vocab: usize,
    dlogits: Option<&mut [f32]>,
) -> Result<CrossEntropy, OpsError> {
    const OP: &str = "causal_lm_cross_entropy";
    let n = dims(OP, &[batch, seq])?;
    check_len(OP, "labels", labels.len(), n)?;
    check_len(OP, "logits", logits.len(), dims(OP, &[n, vocab])?)?;
    if let Some(d) = &dlogits {
        check_len(OP, "dlogits", d.len(), logits.len())?;
    }
    if vocab == 0 {
        return Err(OpsError::Config {
            op: OP,
            msg: "vocab must be positive".into(),
        });
    }
    // First pass: validate labels and count N (cheap, and the gradient needs 1/N).
    let mut count = 0usize;
    for row in 0..n {
        if target(labels, row, seq, vocab)?.is_some() {
            count += 1;
        }
    }
    let inv_n = if count == 0 { 0.0 } else { 1.0 / count as f32 };
    let rows = rows_per_task(vocab);

    // Row loss, with the gradient written into `d` when given.
    let row_loss = |row: usize, z: &[f32], d: Option<&mut [f32]>| -> Result<f64, OpsError> {
        let Some(t) = target(labels, row, seq, vocab)? else {
            if let Some(d) = d {
                d.fill(0.0);
            }
            return Ok(0.0);
        };
        let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f32 = z.iter().map(|&v| (v - max).exp()).sum();
        let log_sum = sum.ln();
        if let Some(d) = d {
            for (d, &v) in d.iter_mut().zip(z) {
                *d = (v - max).exp() / sum * inv_n;
            }
            d[t] -= inv_n;
        }
        // -log_softmax(z)[t] = -(z_t - max - log_sum)
        Ok(-((z[t] - max) - log_sum) as f64)
    };

    // Chunk sums in a reused buffer, added in chunk order (deterministic);
    // the first error of any row is kept (no allocation unless one occurs).
    let failed: std::sync::Mutex<Option<OpsError>> = std::sync::Mutex::new(None);
    let keep = |r: Result<f64, OpsError>| match r {
        Ok(s) => s,
        Err(e) => {
            if let Ok(mut f) = failed.lock() {
                f.get_or_insert(e);
            }
            0.0
        }
    };
    let mut sums = CHUNK_SUMS.take();
    match dlogits {
        Some(d) => d
            .par_chunks_mut(rows * vocab)
            .zip(logits.par_chunks(rows * vocab))
            .enumerate()
            .map(|(chunk, (d, z))| {
                keep((|| {
                    let mut s = 0.0f64;
                    for (i, (d, z)) in d.chunks_exact_mut(vocab).zip(z.chunks_exact(vocab)).enumerate() {
                        s += row_loss(chunk * rows + i, z, Some(d))?;
                    }
                    Ok(s)
                })())
            })
            .collect_into_vec(&mut sums),
        None => logits
            .par_chunks(rows * vocab)
            .enumerate()
            .map(|(chunk, z)| {
                keep((|| {
                    let mut s = 0.0f64;
                    for (i, z) in z.chunks_exact(vocab).enumerate() {
                        s += row_loss(chunk * rows + i, z, None)?;
                    }
                    Ok(s)
                })())
            })
            .collect_into_vec(&mut sums),
    }
    let total: f64 = sums.iter().sum();
    CHUNK_SUMS.give(sums);
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let loss = if count == 0 { 0.0 } else { (total / count as f64) as f32 };
    Ok(CrossEntropy { loss, count })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, fd_grad, to64};

    /// Independent f64 reference: shift labels, mean NLL of log-softmax.
    fn ce_ref(z: &[f64], labels: &[i64], batch: usize, seq: usize, vocab: usize) -> f64 {
        let mut total = 0.0;
        let mut count = 0;
        for b in 0..batch {
            for i in 0..seq.saturating_sub(1) {
                let y = labels[b * seq + i + 1];
                if y == -100 {
                    continue;
                }
                let row = &z[(b * seq + i) * vocab..][..vocab];
                let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
                total += lse - row[y as usize];
                count += 1;
            }
        }
        total / count as f64
    }

    #[test]
    fn loss_and_fd_gradient_with_ignored_labels() {
        let mut rng = Rng::new(71);
        for (batch, seq, vocab) in [(2usize, 5usize, 7usize), (1, 2, 1), (3, 3, 17)] {
            let n = batch * seq;
            let logits = rng.vec_scaled(n * vocab, 3.0);
            let mut labels: Vec<i64> = (0..n).map(|_| rng.below(vocab) as i64).collect();
            // ignore a few (position 0 labels are never used anyway)
            labels[0] = -100;
            if n > 3 {
                labels[2] = -100;
            }
            let mut d = vec![f32::NAN; n * vocab];
            let ce = causal_lm_cross_entropy(&logits, &labels, batch, seq, vocab, Some(&mut d)).unwrap();
            let z64 = to64(&logits);
            let want = ce_ref(&z64, &labels, batch, seq, vocab);
            assert!(
                (ce.loss as f64 - want).abs() < 1e-6 * want.abs().max(1.0),
                "{} vs {want}",
                ce.loss
            );
            let fd = fd_grad(&z64, 1e-6, |z| ce_ref(z, &labels, batch, seq, vocab));
            assert_close("dlogits", &d, &fd, 1e-6, 1e-5);
            // eval-only path gives the same loss
            let ce2 = causal_lm_cross_entropy(&logits, &labels, batch, seq, vocab, None).unwrap();
            assert_eq!(ce, ce2);
        }
    }

    #[test]
    fn counts_positions_and_handles_none_counted() {
        let logits = vec![0.0f32; 2 * 3 * 4];
        let labels = vec![1i64, 2, 3, 0, -100, 1];
        let ce = causal_lm_cross_entropy(&logits, &labels, 2, 3, 4, None).unwrap();
        // row 0: labels 2, 3 counted; row 1: -100 ignored, 1 counted
        assert_eq!(ce.count, 3);
        assert!((ce.loss - 4f32.ln()).abs() < 1e-6);
        let all_ignored = vec![-100i64; 6];
        let mut d = vec![f32::NAN; 24];
        let ce = causal_lm_cross_entropy(&logits, &all_ignored, 2, 3, 4, Some(&mut d)).unwrap();
        assert_eq!(ce, CrossEntropy { loss: 0.0, count: 0 });
        assert!(d.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn rejects_out_of_range_label() {
        let logits = vec![0.0f32; 3 * 4];
        let err = causal_lm_cross_entropy(&logits, &[0, 4, 1], 1, 3, 4, None).unwrap_err();
        assert!(matches!(err, OpsError::IdOutOfRange { id: 4, row: 1, .. }));
    }
}
