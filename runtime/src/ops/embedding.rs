//! Token embedding lookup and its scatter-add backward.
//!
//! Ids are `i64` as stored in the golden `inputs.safetensors`; an id outside
//! `0 .. vocab` is an error, not a panic. The backward is here for
//! completeness (the base embedding never trains in lamdac); it runs on one
//! thread because repeated ids make the scatter-add racy otherwise.

use rayon::prelude::*;

use super::{OpsError, Store, check_len, dims, rows_per_task};

fn row_index(op: &'static str, row: usize, id: i64, vocab: usize) -> Result<usize, OpsError> {
    usize::try_from(id)
        .ok()
        .filter(|&i| i < vocab)
        .ok_or(OpsError::IdOutOfRange { op, row, id, vocab })
}

/// Embedding forward: `out[i, :] = table[ids[i], :]`.
///
/// table: `(vocab, d)`, ids: `(n)`, out: `(n, d)`. Backward needs only `ids`.
pub fn embedding_forward(table: &[f32], vocab: usize, d: usize, ids: &[i64], out: &mut [f32]) -> Result<(), OpsError> {
    const OP: &str = "embedding_forward";
    check_len(OP, "table", table.len(), dims(OP, &[vocab, d])?)?;
    check_len(OP, "out", out.len(), dims(OP, &[ids.len(), d])?)?;
    if d == 0 {
        return Ok(());
    }
    // Validate every id before writing anything.
    for (row, &id) in ids.iter().enumerate() {
        row_index(OP, row, id, vocab)?;
    }
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d)
        .zip(ids.par_chunks(rows))
        .enumerate()
        .try_for_each(|(chunk, (out, ids))| {
            for (o, (i, &id)) in out.chunks_exact_mut(d).zip(ids.iter().enumerate()) {
                let t = row_index(OP, chunk * rows + i, id, vocab)?;
                o.copy_from_slice(&table[t * d..(t + 1) * d]);
            }
            Ok(())
        })
}

/// Embedding backward (scatter-add): `dtable[ids[i], :] += dout[i, :]` for every row i.
///
/// ids: `(n)`, dout: `(n, d)`, dtable: `(vocab, d)`. With
/// [`Store::Overwrite`] dtable is zeroed first, so rows of ids that do not
/// occur get gradient 0; with [`Store::Accumulate`] it is added into.
pub fn embedding_backward(
    ids: &[i64],
    dout: &[f32],
    vocab: usize,
    d: usize,
    dtable: &mut [f32],
    store: Store,
) -> Result<(), OpsError> {
    const OP: &str = "embedding_backward";
    check_len(OP, "dout", dout.len(), dims(OP, &[ids.len(), d])?)?;
    check_len(OP, "dtable", dtable.len(), dims(OP, &[vocab, d])?)?;
    for (row, &id) in ids.iter().enumerate() {
        row_index(OP, row, id, vocab)?;
    }
    if store == Store::Overwrite {
        dtable.fill(0.0);
    }
    if d == 0 {
        return Ok(());
    }
    for (row, (&id, g)) in ids.iter().zip(dout.chunks_exact(d)).enumerate() {
        let t = row_index(OP, row, id, vocab)?;
        dtable[t * d..(t + 1) * d].iter_mut().zip(g).for_each(|(a, b)| *a += b);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ops::testutil::{Rng, assert_close, dot, fd_grad, to64};

    #[test]
    fn lookup_and_scatter_add_fd() {
        let mut rng = Rng::new(21);
        let (vocab, d) = (7usize, 3usize);
        let ids = vec![3i64, 0, 3, 6, 3];
        let table = rng.vec(vocab * d);
        let mut out = vec![0.0; ids.len() * d];
        embedding_forward(&table, vocab, d, &ids, &mut out).unwrap();
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(&out[i * d..(i + 1) * d], &table[id as usize * d..][..d]);
        }
        // d<g, table[ids]>/d table by finite differences on an f64 gather.
        let g = rng.vec(ids.len() * d);
        let g64 = to64(&g);
        let gather = |t: &[f64]| -> Vec<f64> {
            ids.iter()
                .flat_map(|&id| t[id as usize * d..(id as usize + 1) * d].to_vec())
                .collect()
        };
        let fd = fd_grad(&to64(&table), 1e-6, |t| dot(&g64, &gather(t)));
        let mut dtable = vec![f32::NAN; vocab * d];
        embedding_backward(&ids, &g, vocab, d, &mut dtable, Store::Overwrite).unwrap();
        assert_close("dtable", &dtable, &fd, 1e-6, 1e-6);
        // Accumulate adds on top.
        embedding_backward(&ids, &g, vocab, d, &mut dtable, Store::Accumulate).unwrap();
        let twice: Vec<f64> = fd.iter().map(|v| 2.0 * v).collect();
        assert_close("dtable x2", &dtable, &twice, 1e-6, 1e-6);
    }

    #[test]
    fn rejects_out_of_range_ids() {
        let table = vec![0.0f32; 4 * 2];
        let mut out = vec![0.0; 2 * 2];
        let err = embedding_forward(&table, 4, 2, &[1, 4], &mut out).unwrap_err();
        assert_eq!(
            err,
            OpsError::IdOutOfRange {
                op: "embedding_forward",
                row: 1,
                id: 4,
                vocab: 4
            }
        );
        assert!(embedding_forward(&table, 4, 2, &[-1, 0], &mut out).is_err());
    }
}
