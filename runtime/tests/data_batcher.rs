//! The batcher: deterministic per seed, every epoch a permutation, batches that run on
//! across epochs, and a serialized state that resumes exactly.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use lamda_compiler::diag::Code;
use std::path::Path;

use lamda_runtime::data::{Batch, BatchConfig, Batcher, BatcherState, DataError, Dataset, Tokenizer};

/// A byte-level text dataset of `n` tokens (all distinct mod 256 runs).
fn text_data(dir: &Path, n: usize) -> Dataset {
    let bytes: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
    let p = dir.join(format!("t{n}.txt"));
    std::fs::write(&p, bytes).unwrap();
    Dataset::load(&p, &Tokenizer::bytes()).unwrap()
}

fn cfg(seq: usize, batch: usize, seed: u64) -> BatchConfig {
    BatchConfig {
        seq,
        batch,
        seed,
        shuffle: None,
    }
}

fn take(b: &mut Batcher, n: usize) -> Vec<Batch> {
    b.by_ref().take(n).collect()
}

#[test]
fn same_seed_same_batches_other_seed_other_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_data(dir.path(), 17 * 23 + 5); // 23 windows of 17
    let a = take(&mut Batcher::new(data.clone(), cfg(17, 3, 42)).unwrap(), 20);
    let b = take(&mut Batcher::new(data.clone(), cfg(17, 3, 42)).unwrap(), 20);
    assert_eq!(a, b);
    let c = take(&mut Batcher::new(data, cfg(17, 3, 43)).unwrap(), 20);
    assert_ne!(
        a.iter().map(|x| x.items.clone()).collect::<Vec<_>>(),
        c.iter().map(|x| x.items.clone()).collect::<Vec<_>>()
    );
    for batch in &a {
        assert_eq!(batch.input_ids.dim(), (3, 17));
        assert_eq!(batch.labels.dim(), (3, 17));
    }
}

#[test]
fn each_epoch_is_a_shuffled_permutation_of_all_windows() {
    let dir = tempfile::tempdir().unwrap();
    let n = 23;
    let data = text_data(dir.path(), 17 * n);
    let mut b = Batcher::new(data, cfg(17, 1, 7)).unwrap();
    let mut epochs = Vec::new();
    for e in 0..4u64 {
        let items: Vec<usize> = take(&mut b, n)
            .into_iter()
            .map(|x| {
                assert_eq!(x.epoch, e);
                x.items[0]
            })
            .collect();
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "epoch {e} is a permutation");
        epochs.push(items);
    }
    assert_ne!(epochs[0], (0..n).collect::<Vec<_>>(), "shuffled");
    assert_ne!(epochs[0], epochs[1], "reshuffled per epoch");
}

#[test]
fn batches_run_on_across_epoch_boundaries_without_shuffle() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_data(dir.path(), 5 * 4);
    let mut b = Batcher::new(
        data,
        BatchConfig {
            seq: 4,
            batch: 3,
            seed: 0,
            shuffle: Some(false),
        },
    )
    .unwrap();
    assert_eq!(b.batches_per_epoch(), 2);
    let items: Vec<(Vec<usize>, u64)> = take(&mut b, 4).into_iter().map(|x| (x.items, x.epoch)).collect();
    assert_eq!(
        items,
        vec![
            (vec![0, 1, 2], 0),
            (vec![3, 4, 0], 0),
            (vec![1, 2, 3], 1),
            (vec![4, 0, 1], 1)
        ]
    );
}

#[test]
fn serialized_state_resumes_exactly_mid_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_data(dir.path(), 13 * 10);
    // 10 windows, batch 3: epoch boundaries fall inside batches.
    let mut a = Batcher::new(data.clone(), cfg(13, 3, 2024)).unwrap();
    take(&mut a, 7);
    let saved = serde_json::to_string(&a.state()).unwrap();
    let expected = take(&mut a, 12);

    let state: BatcherState = serde_json::from_str(&saved).unwrap();
    assert_eq!(state.epoch, 2);
    assert_eq!(state.position, 1);
    assert_eq!(state.batches, 7);
    let mut b = Batcher::new(data.clone(), cfg(13, 3, 2024)).unwrap();
    b.restore(&state).unwrap();
    assert_eq!(take(&mut b, 12), expected);
    assert_eq!(a.state(), b.state());

    // A state from other settings or other data is refused.
    let mut other_seed = Batcher::new(data.clone(), cfg(13, 3, 1)).unwrap();
    let e = other_seed.restore(&state).unwrap_err();
    assert_eq!(e.code(), Code::DataStateMismatch);
    assert!(matches!(e, DataError::StateMismatch { field: "seed", .. }), "{e}");
    let mut other_batch = Batcher::new(data, cfg(13, 2, 2024)).unwrap();
    assert!(matches!(
        other_batch.restore(&state).unwrap_err(),
        DataError::StateMismatch { field: "batch", .. }
    ));
    let mut other_data = Batcher::new(text_data(dir.path(), 13 * 10 + 1), cfg(13, 3, 2024)).unwrap();
    // Same window count, different bytes → the fingerprint differs.
    let p = dir.path().join("other.txt");
    std::fs::write(&p, vec![b'z'; 130]).unwrap();
    let mut changed = Batcher::new(Dataset::load(&p, &Tokenizer::bytes()).unwrap(), cfg(13, 3, 2024)).unwrap();
    let e = changed.restore(&state).unwrap_err();
    assert!(matches!(e, DataError::StateMismatch { field: "data", .. }), "{e}");
    assert!(e.hint().contains("same data file"));
    let e = other_data.restore(&state).unwrap_err();
    assert!(matches!(e, DataError::StateMismatch { field: "data", .. }), "{e}");
}

#[test]
fn jsonl_examples_are_shuffled_by_default_and_resume_too() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..11)
        .map(|i| format!("{{\"prompt\": \"q{i}\", \"completion\": \"{}\"}}\n", "a".repeat(i)))
        .collect();
    let p = dir.path().join("sft.jsonl");
    std::fs::write(&p, lines).unwrap();
    let data = Dataset::load(&p, &Tokenizer::bytes()).unwrap();
    let mut a = Batcher::new(data.clone(), cfg(8, 4, 5)).unwrap();
    let first: Vec<usize> = take(&mut a, 3).into_iter().flat_map(|x| x.items).collect();
    assert_ne!(first[..11], (0..11).collect::<Vec<_>>()[..], "shuffled");
    let state = a.state();
    let expected = take(&mut a, 5);
    let mut b = Batcher::new(data, cfg(8, 4, 5)).unwrap();
    b.restore(&state).unwrap();
    assert_eq!(take(&mut b, 5), expected);
}
