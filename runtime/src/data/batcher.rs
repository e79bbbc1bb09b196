//! Deterministic, resumable batches of `(input_ids, labels)`, each `(batch, seq)` i64.
//!
//! The data is a list of items: `seq`-token windows of a text stream (the tail
//! shorter than `seq` is dropped), JSONL examples truncated (keeping the end of a
//! long prompt and the start of its completion) or padded to `seq`
//! (pad id, label -100), or the rows of a token-id file (which must be `seq`
//! long). Each epoch visits every item once, in an order that is a pure
//! function of `(seed, epoch)` (a Fisher–Yates shuffle driven by SplitMix64,
//! spelled out here so that no dependency upgrade can change a run's data
//! order), or in file order when shuffling is off. Batches take the next
//! `batch` items and run on into the next epoch when one ends, so every batch
//! is full and no item is skipped.
//!
//! Because the order is recomputed from `(seed, epoch)`, the whole iterator
//! state is [`BatcherState`]: seed, epoch and position (the rng state is a
//! function of those), plus the settings and a fingerprint of the data so that
//! a resume with different data or settings is refused instead of silently
//! continuing with another order.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, IGNORE_INDEX, Source};
use super::error::DataError;

/// How to batch a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchConfig {
    /// Tokens per row.
    pub seq: usize,
    /// Rows per batch.
    pub batch: usize,
    /// Seed of the per-epoch shuffle.
    pub seed: u64,
    /// Shuffle items each epoch; `None` = the format's default (text and JSONL
    /// shuffle, token-id files keep their row order).
    pub shuffle: Option<bool>,
}

/// What a batch of sequences to classify adds to token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRows {
    /// Segment ids, 0 on padding. // (batch, seq)
    pub token_types: Array2<i64>,
    /// Tokens of each row that are not padding. // (batch)
    pub lengths: Vec<i64>,
    /// The class of each row. // (batch)
    pub labels: Vec<i64>,
}

/// One training batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Token ids. // (batch, seq)
    pub input_ids: Array2<i64>,
    /// Labels, -100 where there is no loss (all -100 for classification). // (batch, seq)
    pub labels: Array2<i64>,
    /// Segment ids, lengths and classes, for a classification head.
    pub classes: Option<ClassRows>,
    /// The items (windows, examples or rows) in this batch, in row order.
    pub items: Vec<usize>,
    /// The epoch of the batch's first row (0-based).
    pub epoch: u64,
}

/// Everything needed to continue a [`Batcher`] exactly where it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatcherState {
    /// The shuffle seed.
    pub seed: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Items of the current epoch already served.
    pub position: usize,
    /// Batches served so far.
    pub batches: u64,
    /// Items per epoch (a check on resume).
    pub items: usize,
    /// Tokens per row (a check on resume).
    pub seq: usize,
    /// Rows per batch (a check on resume).
    pub batch: usize,
    /// Whether items are shuffled (a check on resume).
    pub shuffle: bool,
    /// FNV-1a hash of the tokenized data (a check on resume).
    pub data_hash: u64,
}

/// Cuts a [`Dataset`] into batches, deterministically and resumably.
#[derive(Debug, Clone)]
pub struct Batcher {
    data: Dataset,
    seq: usize,
    batch: usize,
    seed: u64,
    shuffle: bool,
    items: usize,
    data_hash: u64,
    epoch: u64,
    position: usize,
    batches: u64,
    /// Item order of the current epoch.
    order: Vec<usize>,
}

impl Batcher {
    /// Prepares batching; fails if `seq` or `batch` is 0, if a text stream is shorter
    /// than one window, or if token-id rows are not `seq` long.
    pub fn new(data: Dataset, config: BatchConfig) -> Result<Self, DataError> {
        let BatchConfig {
            seq,
            batch,
            seed,
            shuffle,
        } = config;
        if seq == 0 || batch == 0 {
            return Err(DataError::BadBatching {
                problem: format!("seq {seq}, batch {batch}"),
            });
        }
        let items = match &data.source {
            Source::Stream(tokens) => {
                let n = tokens.len() / seq;
                if n == 0 {
                    return Err(DataError::TooShort {
                        path: data.path().to_path_buf(),
                        tokens: tokens.len(),
                        seq,
                    });
                }
                n
            }
            Source::Examples { examples, .. } => examples.len(),
            Source::Classes { examples, .. } => examples.len(),
            Source::Rows { input_ids, .. } => {
                let (rows, file_seq) = input_ids.dim();
                if file_seq != seq {
                    return Err(DataError::SeqMismatch {
                        path: data.path().to_path_buf(),
                        file_seq,
                        seq,
                    });
                }
                rows
            }
        };
        if items == 0 {
            return Err(DataError::Empty {
                path: data.path().to_path_buf(),
            });
        }
        let shuffle = shuffle.unwrap_or(!matches!(data.source, Source::Rows { .. }));
        let data_hash = fingerprint(&data);
        let mut b = Self {
            data,
            seq,
            batch,
            seed,
            shuffle,
            items,
            data_hash,
            epoch: 0,
            position: 0,
            batches: 0,
            order: Vec::new(),
        };
        b.order = b.epoch_order(0);
        Ok(b)
    }

    /// Items per epoch (windows, examples or rows).
    pub fn items_per_epoch(&self) -> usize {
        self.items
    }

    /// Batches per epoch, rounded up (batches run on across epoch boundaries).
    pub fn batches_per_epoch(&self) -> usize {
        self.items.div_ceil(self.batch)
    }

    /// The dataset being batched.
    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    /// The next batch. Never ends: epochs follow one another.
    pub fn next_batch(&mut self) -> Batch {
        let mut input_ids = Array2::<i64>::zeros((self.batch, self.seq));
        let mut labels = Array2::<i64>::from_elem((self.batch, self.seq), IGNORE_INDEX);
        let mut items = Vec::with_capacity(self.batch);
        let mut classes = matches!(self.data.source, Source::Classes { .. }).then(|| ClassRows {
            token_types: Array2::zeros((self.batch, self.seq)),
            lengths: vec![0; self.batch],
            labels: vec![IGNORE_INDEX; self.batch],
        });
        let mut epoch = self.epoch;
        for r in 0..self.batch {
            if self.position >= self.items {
                self.epoch += 1;
                self.position = 0;
                self.order = self.epoch_order(self.epoch);
            }
            if r == 0 {
                epoch = self.epoch;
            }
            let item = self.order.get(self.position).copied().unwrap_or(0);
            self.position += 1;
            items.push(item);
            let ids_row = input_ids.row_mut(r);
            let labels_row = labels.row_mut(r);
            self.fill(item, ids_row, labels_row);
            if let (Some(c), Source::Classes { examples, .. }) = (&mut classes, &self.data.source)
                && let Some(ex) = examples.get(item)
            {
                let n = ex.ids.len().min(self.seq);
                for (t, &v) in c.token_types.row_mut(r).iter_mut().zip(&ex.type_ids[..n]) {
                    *t = i64::from(v);
                }
                c.lengths[r] = n as i64;
                c.labels[r] = ex.label;
            }
        }
        self.batches += 1;
        Batch {
            input_ids,
            labels,
            classes,
            items,
            epoch,
        }
    }

    /// Writes item `item` into one row of ids and one of labels.
    fn fill(&self, item: usize, mut ids: ndarray::ArrayViewMut1<'_, i64>, mut labels: ndarray::ArrayViewMut1<'_, i64>) {
        let seq = self.seq;
        match &self.data.source {
            Source::Stream(tokens) => {
                let window = tokens.iter().skip(item * seq).take(seq);
                for ((id, label), &t) in ids.iter_mut().zip(labels.iter_mut()).zip(window) {
                    *id = i64::from(t);
                    *label = i64::from(t);
                }
            }
            Source::Examples { examples, pad_id } => {
                ids.fill(i64::from(*pad_id));
                if let Some(ex) = examples.get(item) {
                    // An example longer than the row keeps the end of its prompt
                    // (at least half a row of it) and the start of its completion,
                    // so every row has positions that count.
                    let start = if ex.ids.len() > seq && ex.loss_from > 0 {
                        let completion = ex.ids.len() - ex.loss_from;
                        let keep_prompt = seq.saturating_sub(completion).max(seq / 2).min(ex.loss_from);
                        ex.loss_from - keep_prompt
                    } else {
                        0
                    };
                    let cells = ids.iter_mut().zip(labels.iter_mut());
                    for (j, ((id, label), &t)) in cells.zip(&ex.ids[start.min(ex.ids.len())..]).enumerate() {
                        *id = i64::from(t);
                        if ex.counts(j + start) {
                            *label = i64::from(t);
                        }
                    }
                }
            }
            Source::Classes { examples, pad_id } => {
                ids.fill(i64::from(*pad_id));
                if let Some(ex) = examples.get(item) {
                    for (id, &t) in ids.iter_mut().zip(&ex.ids) {
                        *id = i64::from(t);
                    }
                }
            }
            Source::Rows {
                input_ids,
                labels: file_labels,
            } => {
                // `item < rows` by construction; an impossible miss leaves an all-ignored row.
                if item < input_ids.nrows() && item < file_labels.nrows() {
                    ids.assign(&input_ids.row(item));
                    labels.assign(&file_labels.row(item));
                }
            }
        }
    }

    /// The order of items in epoch `epoch`.
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items).collect();
        if self.shuffle {
            let mut rng = SplitMix64::for_epoch(self.seed, epoch);
            for i in (1..order.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// The state to save with a training checkpoint.
    pub fn state(&self) -> BatcherState {
        BatcherState {
            seed: self.seed,
            epoch: self.epoch,
            position: self.position,
            batches: self.batches,
            items: self.items,
            seq: self.seq,
            batch: self.batch,
            shuffle: self.shuffle,
            data_hash: self.data_hash,
        }
    }

    /// Continues from a saved state: the next batch is the one that would have
    /// followed when the state was taken. Refuses a state from other data or settings.
    pub fn restore(&mut self, state: &BatcherState) -> Result<(), DataError> {
        let mismatch = |field: &'static str, saved: String, current: String| {
            Err(DataError::StateMismatch { field, saved, current })
        };
        if state.seed != self.seed {
            return mismatch("seed", state.seed.to_string(), self.seed.to_string());
        }
        if state.seq != self.seq {
            return mismatch("seq", state.seq.to_string(), self.seq.to_string());
        }
        if state.batch != self.batch {
            return mismatch("batch", state.batch.to_string(), self.batch.to_string());
        }
        if state.shuffle != self.shuffle {
            return mismatch("shuffle", state.shuffle.to_string(), self.shuffle.to_string());
        }
        if state.items != self.items || state.data_hash != self.data_hash {
            return mismatch(
                "data",
                format!("{} items (hash {:016x})", state.items, state.data_hash),
                format!("{} items (hash {:016x})", self.items, self.data_hash),
            );
        }
        if state.position > self.items {
            return mismatch(
                "position",
                state.position.to_string(),
                format!("at most {}", self.items),
            );
        }
        self.epoch = state.epoch;
        self.position = state.position;
        self.batches = state.batches;
        self.order = self.epoch_order(self.epoch);
        Ok(())
    }
}

impl Iterator for Batcher {
    type Item = Batch;

    /// Always `Some`: the batcher cycles through epochs forever.
    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fixed forever.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started at `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator whose stream depends on both the seed and the epoch.
    fn for_epoch(seed: u64, epoch: u64) -> Self {
        let mut g = Self(seed);
        let a = g.next_u64();
        Self(a ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; bias below n / 2^64).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// FNV-1a over the tokenized data (ids, label masks, pad id), as a resume check.
fn fingerprint(data: &Dataset) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut eat = |v: i64| {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    };
    match &data.source {
        Source::Stream(t) => {
            eat(0);
            t.iter().for_each(|&v| eat(i64::from(v)));
        }
        Source::Examples { examples, pad_id } => {
            eat(1);
            eat(i64::from(*pad_id));
            for e in examples {
                eat(e.ids.len() as i64);
                eat(e.loss_from as i64);
                e.ids.iter().for_each(|&v| eat(i64::from(v)));
                // only chats have gaps: the hashes of other data stay as they were
                for &(a, b) in &e.no_loss {
                    eat(a as i64);
                    eat(b as i64);
                }
            }
        }
        Source::Classes { examples, pad_id } => {
            eat(3);
            eat(i64::from(*pad_id));
            for e in examples {
                eat(e.ids.len() as i64);
                eat(e.label);
                e.ids.iter().for_each(|&v| eat(i64::from(v)));
                e.type_ids.iter().for_each(|&v| eat(i64::from(v)));
            }
        }
        Source::Rows { input_ids, labels } => {
            eat(2);
            input_ids.iter().for_each(|&v| eat(v));
            labels.iter().for_each(|&v| eat(v));
        }
    }
    h
}
